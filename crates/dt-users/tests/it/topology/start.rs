//! Running compose.yaml's dt-users services as processes: each with the service's command
//! line and environment, changed only by the overrides the test names, started in the order of
//! `depends_on` once each condition holds.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::client::{Api, eventually};
use super::compose::{self, Service};
use super::processes::{Launch, PROBE, Processes};
use super::{Change, SERVICES, STOOD_IN_FOR, WAIT, instances, overrides};
use crate::helpers::{create_database, delete_redis_prefix, drop_database};
use crate::kafka::Broker;
use crate::mail::{SmtpSink, free_port};

/// The environment of `service` after [`overrides`].
fn environment(
    name: &str,
    service: &Service,
    overrides: &[(&'static str, String, Change)],
) -> BTreeMap<String, String> {
    let mut env = service.environment.clone();
    for (variable, value, change) in overrides {
        let set = env.insert((*variable).to_owned(), value.clone()).is_some();
        match change {
            Change::Replace => assert!(
                set,
                "compose.yaml does not set {variable} for {name}: the test would supply what \
                 production lacks"
            ),
            Change::Add => assert!(
                !set,
                "compose.yaml now sets {variable} for {name}: make it a replaced value"
            ),
        }
    }
    env
}

/// The command line of `service` with compose.yaml's `--host` and `--port` replaced: the
/// processes share one network namespace here, not one each as in compose.
fn arguments(service: &Service, port: u16) -> Vec<String> {
    let mut args = service.command.clone();
    for at in 1..args.len() {
        match args[at - 1].as_str() {
            "--host" => args[at] = "127.0.0.1".into(),
            "--port" => args[at] = port.to_string(),
            _ => {}
        }
    }
    args
}

/// The test's database and Redis keys, removed when dropped (after the processes are gone).
struct Leftovers {
    database: String,
    redis_prefix: String,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (database, prefix) = (self.database.clone(), self.redis_prefix.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                drop_database(&database).await;
                delete_redis_prefix(&prefix).await;
            });
        })
        .join();
    }
}

/// What the test runs, in the order it must stop: the processes first, then its data, then
/// the servers the processes used.
pub struct Topology {
    pub processes: Processes,
    _leftovers: Leftovers,
    pub sink: SmtpSink,
    pub broker: Broker,
    pub database_url: String,
    redis_prefix: String,
    started: Instant,
    steps: usize,
}

impl Topology {
    /// The servers compose.yaml's other services stand for: a fresh MariaDB database, a Redis
    /// key prefix, an SMTP sink and a Kafka broker without topics (`kafka-topics` makes them).
    pub async fn new() -> Self {
        let (database, database_url) = create_database().await;
        let redis_prefix = format!("dtu-test:{}", uuid::Uuid::new_v4().simple());
        Self {
            processes: Processes::new(),
            _leftovers: Leftovers {
                database,
                redis_prefix: redis_prefix.clone(),
            },
            sink: SmtpSink::start().await,
            broker: Broker::start_without_topics().await,
            database_url,
            redis_prefix,
            started: Instant::now(),
            steps: 0,
        }
    }

    pub fn step(&mut self, what: &str) {
        self.steps += 1;
        let step = format!("step {}: {what}", self.steps);
        eprintln!("[{:>6.1}s] {step}", self.started.elapsed().as_secs_f64());
        self.processes.step = step;
    }
}

/// Starts compose.yaml's dt-users services in the order of their `depends_on`, each once its
/// conditions hold; returns the `serve` instances and the services as compose.yaml has them.
pub async fn start_services(t: &mut Topology) -> (Vec<Api>, BTreeMap<String, Service>) {
    let services = compose::dt_users_services();
    assert_eq!(
        services.keys().map(String::as_str).collect::<Vec<_>>(),
        SERVICES,
        "the dt-users services of compose.yaml"
    );
    let overrides = overrides(
        &t.database_url,
        &t.redis_prefix,
        &t.broker.bootstrap(),
        &t.sink.url(),
    );
    assert_eq!(
        services["serve"].environment["DT_USERS_RUN_BACKGROUND_IN_SERVE"], "false",
        "serve must leave the background roles to their own services"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut healthy: HashSet<String> = HashSet::new();
    let mut completed: HashSet<String> = HashSet::new();
    let mut apis = Vec::new();
    for name in compose::start_order(&services) {
        let service = &services[&name];
        assert!(
            service.entrypoint.is_none(),
            "{name}: the image's entrypoint is dt-users"
        );
        for (dependency, condition) in &service.depends_on {
            let met = match condition.as_str() {
                _ if STOOD_IN_FOR.contains(&dependency.as_str()) => true,
                "service_completed_successfully" => completed.contains(dependency),
                "service_healthy" => healthy.contains(dependency),
                other => panic!("{name}: the test does not know the condition {other}"),
            };
            assert!(
                met,
                "{name} depends on {dependency} ({condition}), which is not met"
            );
        }
        let env = environment(&name, service, &overrides);
        if service.one_shot() {
            t.step(&format!("{name}: {}", service.command.join(" ")));
            let launch = Launch {
                name: name.clone(),
                args: &service.command,
                env: &env,
            };
            let status = t.processes.run_to_end(&launch, WAIT).await;
            assert!(
                status.success(),
                "{name} failed ({status}):\n{}",
                t.processes.log_tail(&name)
            );
            completed.insert(name);
            continue;
        }
        let probe = service
            .healthcheck
            .clone()
            .unwrap_or_else(|| panic!("{name}: a long-running service needs a health check"));
        let port_in_compose = service
            .flag("--port")
            .unwrap_or_else(|| panic!("{name}: no --port to serve its health on"));
        assert_eq!(
            probe.get(..3).unwrap_or_default(),
            ["CMD", "dt-users-probe", port_in_compose],
            "{name}: its health check must probe the port it serves"
        );
        for n in 1..=instances(&name) {
            let instance = if instances(&name) > 1 {
                format!("{name}#{n}")
            } else {
                name.clone()
            };
            t.step(&format!(
                "start {instance}, wait until it is healthy and ready"
            ));
            let port = free_port();
            let args = arguments(service, port);
            t.processes.start(&Launch {
                name: instance.clone(),
                args: &args,
                env: &env,
            });
            // compose.yaml's health check, on the port this instance has.
            let mut check = vec![port.to_string()];
            check.extend(probe[3..].iter().cloned());
            let base = format!("http://127.0.0.1:{port}");
            eventually(&format!("{instance} healthy and ready"), WAIT, async || {
                t.processes.assert_running(&instance);
                let live = std::process::Command::new(PROBE)
                    .args(&check)
                    .output()
                    .unwrap()
                    .status
                    .success();
                let ready = live
                    && client
                        .get(format!("{base}/health/ready"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == StatusCode::OK);
                ready.then_some(())
            })
            .await;
            if name == "serve" {
                apis.push(Api {
                    base,
                    client: client.clone(),
                });
            }
        }
        healthy.insert(name);
    }
    (apis, services)
}
