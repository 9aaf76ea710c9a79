//! A primary of the cluster fails while both instances serve sign-ins and authenticated
//! requests: it dies (SIGKILL: its connections are refused at once), or it stops answering
//! (SIGSTOP: its connections stay open and silent, as behind a network partition). Until its
//! replica has taken over, the requests that need its slots — and, while the cluster is down,
//! the others — answer 503 `unavailable`; every other answer is the true one: a valid session
//! is never refused, a revoked one never accepted, nothing is a 500 and nothing hangs. Then
//! the sessions it held answer correctly again, through both instances.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::nodes::RedisCluster;
use super::{Api, two_instances};
use crate::helpers::PASSWORD;

/// One session whose answer is known: 200 while valid, 401 `session_revoked` once ended.
#[derive(Debug, Clone)]
struct Probe {
    access: String,
    revoked: bool,
    /// The primary that held its keys before the failover.
    primary: u16,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Correct,
    Unavailable,
    Wrong(String),
}

/// Every answer seen, as it was worth.
#[derive(Debug, Default)]
struct Tally {
    failed_at: Option<Instant>,
    correct: usize,
    unavailable_before: usize,
    unavailable: usize,
    first_unavailable: Option<Duration>,
    last_unavailable: Option<Duration>,
    wrong: Vec<String>,
    /// The longest any answer took.
    slowest: Duration,
}

impl Tally {
    fn record(&mut self, (outcome, took): (Outcome, Duration)) {
        self.slowest = self.slowest.max(took);
        match (outcome, self.failed_at) {
            (Outcome::Correct, _) => self.correct += 1,
            (Outcome::Unavailable, None) => self.unavailable_before += 1,
            (Outcome::Unavailable, Some(failed_at)) => {
                let after = failed_at.elapsed();
                self.unavailable += 1;
                self.first_unavailable.get_or_insert(after);
                self.last_unavailable = Some(after);
            }
            (Outcome::Wrong(what), failed_at) => self.wrong.push(format!(
                "{what} ({:?} after the failure)",
                failed_at.map(|f| f.elapsed())
            )),
        }
    }
}

/// A response judged against what it must be: `expected`, or a 503 `unavailable`.
async fn judge(
    response: reqwest::Result<reqwest::Response>,
    expected: StatusCode,
    code: Option<&str>,
    what: &str,
) -> Outcome {
    let response = match response {
        Ok(response) => response,
        Err(e) => return Outcome::Wrong(format!("{what}: no answer ({e})")),
    };
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    let got = body["code"].as_str();
    if status == expected && (code.is_none() || got == code) {
        Outcome::Correct
    } else if status == StatusCode::SERVICE_UNAVAILABLE && got == Some("unavailable") {
        Outcome::Unavailable
    } else {
        Outcome::Wrong(format!("{what}: {status} {got:?}"))
    }
}

/// The answer about `probe` through `api`, and how long it took.
async fn check(api: &Api, probe: &Probe) -> (Outcome, Duration) {
    let start = Instant::now();
    let response = api
        .client
        .get(api.url("/api/v1/users/current"))
        .bearer_auth(&probe.access)
        .send()
        .await;
    let outcome = match probe.revoked {
        false => judge(response, StatusCode::OK, None, "a valid session").await,
        true => {
            let what = "a revoked session";
            judge(
                response,
                StatusCode::UNAUTHORIZED,
                Some("session_revoked"),
                what,
            )
            .await
        }
    };
    (outcome, start.elapsed())
}

async fn sign_in(api: &Api, email: &str) -> (Outcome, Duration) {
    let start = Instant::now();
    let response = api
        .client
        .post(api.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await;
    let outcome = judge(response, StatusCode::OK, None, "a sign-in").await;
    (outcome, start.elapsed())
}

/// Waits until `done` is true, polling; how long that took.
async fn within(limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[derive(Debug, Clone, Copy)]
enum Failure {
    Killed,
    Frozen,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_answers_503_until_its_replica_takes_over_never_a_wrong_answer() {
    fail_a_primary(Failure::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stops_answering_answers_503_until_its_replica_takes_over() {
    fail_a_primary(Failure::Frozen).await;
}

async fn fail_a_primary(failure: Failure) {
    let mut cluster = RedisCluster::start().await;
    let (app, other) = two_instances(&cluster, |_| {}).await;
    let instances = [Api::of(&app.base), Api::of(&other.base)];

    // Each user has a live session and an ended one, made through both instances.
    let mut probes = Vec::new();
    let mut emails = Vec::new();
    for i in 0..24 {
        let email = format!("user{i}@example.com");
        app.register(&email, &format!("user{i}")).await;
        let live = instances[i % 2].sign_in(&email).await;
        let ended = instances[(i + 1) % 2].sign_in(&email).await;
        assert_eq!(
            instances[i % 2].logout(&ended.access, "local").await,
            StatusCode::NO_CONTENT
        );
        let user_id = app.current_user_id(&live.access).await;
        let key = format!("{}:{{{user_id}}}:sessions", app.redis_prefix);
        let primary = cluster.primary_of(&key).await;
        probes.push(Probe {
            access: live.access,
            revoked: false,
            primary,
        });
        probes.push(Probe {
            access: ended.access,
            revoked: true,
            primary,
        });
        emails.push(email);
    }
    // The primary that holds the most users fails; its replica holds every write so far.
    let primaries = cluster.primaries().await;
    let victim = primaries
        .iter()
        .map(|n| n.port)
        .max_by_key(|port| probes.iter().filter(|p| p.primary == *port).count())
        .unwrap();
    let replica = cluster.replica_of(victim).await;
    cluster.wait_for_replication(victim, replica).await;
    let on_victim: Vec<Probe> = probes
        .iter()
        .filter(|p| p.primary == victim)
        .cloned()
        .collect();
    assert!(
        on_victim.len() >= 2,
        "{} sessions on the victim",
        on_victim.len()
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(probes);
    let emails = Arc::new(emails);
    let traffic: Vec<_> = instances
        .iter()
        .cloned()
        .map(|api| {
            let (tally, stop, probes, emails) =
                (tally.clone(), stop.clone(), probes.clone(), emails.clone());
            tokio::spawn(async move {
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    for probe in probes.iter() {
                        let answer = check(&api, probe).await;
                        tally.lock().unwrap().record(answer);
                    }
                    let answer = sign_in(&api, &emails[round % emails.len()]).await;
                    tally.lock().unwrap().record(answer);
                    round += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Redis does not replicate scripts: whatever loaded them on the primary, the replica
    // takes over without them.
    super::nodes::ask(replica, &["SCRIPT", "FLUSH"])
        .await
        .unwrap();
    let failed_at = Instant::now();
    tally.lock().unwrap().failed_at = Some(failed_at);
    match failure {
        Failure::Killed => cluster.kill(victim),
        Failure::Frozen => cluster.freeze(victim),
    }
    let promoted = within(Duration::from_secs(30), async || {
        cluster.is_primary(replica).await
    })
    .await;
    // Every session the failed primary held answers the truth again, through both instances.
    within(Duration::from_secs(30), async || {
        for api in &instances {
            for probe in &on_victim {
                let answer = check(api, probe).await;
                let correct = answer.0 == Outcome::Correct;
                tally.lock().unwrap().record(answer);
                if !correct {
                    return false;
                }
            }
        }
        true
    })
    .await;
    let recovered = failed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for task in traffic {
        task.await.unwrap();
    }
    // After the switch, every session and sign-in through both instances, none a 503.
    let mut after = Vec::new();
    for api in &instances {
        for probe in probes.iter() {
            after.push(check(api, probe).await.0);
        }
        after.push(sign_in(api, &emails[0]).await.0);
    }

    let tally = tally.lock().unwrap();
    eprintln!(
        "failover ({failure:?}): primary :{victim} failed, {} of its sessions probed; replica :{replica} \
         primary after {promoted:?}; every answer true again after {recovered:?}; {} answers \
         503 (first {:?}, last {:?} after the failure), {} correct, {} wrong; the slowest \
         answer took {:?}",
        on_victim.len(),
        tally.unavailable,
        tally.first_unavailable,
        tally.last_unavailable,
        tally.correct,
        tally.wrong.len(),
        tally.slowest,
    );
    assert!(tally.wrong.is_empty(), "wrong answers: {:#?}", tally.wrong);
    assert_eq!(tally.unavailable_before, 0, "503s before the failure");
    // A request that needs the failed primary fails within a few seconds (the cluster
    // client's overall timeout), it does not wait for the failover.
    assert!(
        tally.slowest < Duration::from_secs(8),
        "{:?}",
        tally.slowest
    );
    assert!(
        after.iter().all(|o| *o == Outcome::Correct),
        "after the switch: {after:?}"
    );
}
