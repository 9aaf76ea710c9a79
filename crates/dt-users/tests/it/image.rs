//! The container image, built and run on this machine: `scripts/scratch-image` puts the binary
//! under test into a `FROM scratch` image with buildah (no container engine or registry is
//! needed) with the runtime contract of the `Dockerfile` — user 10001, the data directory,
//! `HEALTHCHECK` with `dt-users-probe`, `ENTRYPOINT` `dt-users`, `CMD` `serve` — then runs it.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::mail::free_port;
use crate::process::answers_within;
use crate::process::register_ada;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/scratch-image");

fn buildah(args: &[&str]) -> Output {
    Command::new("buildah")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("buildah (apt-get install buildah; scripts/setup-test-env does)")
}

fn stdout_of(args: &[&str]) -> String {
    let output = buildah(args);
    assert!(
        output.status.success(),
        "buildah {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// An image and a working container of it, removed on drop.
struct Image {
    tag: String,
    container: Option<String>,
    running: Option<Child>,
}

impl Drop for Image {
    fn drop(&mut self) {
        if let Some(mut child) = self.running.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(container) = self.container.take() {
            buildah(&["rm", &container]);
        }
        buildah(&["rmi", "-f", &self.tag]);
    }
}

#[tokio::test]
async fn the_image_runs_the_service_as_an_unprivileged_user_and_its_health_probe_passes() {
    let tag = format!("localhost/dt-users-test:{}", uuid::Uuid::new_v4().simple());
    let built = Command::new(SCRIPT)
        .args([env!("CARGO_BIN_EXE_dt-users"), &tag])
        .output()
        .unwrap();
    let mut image = Image {
        tag: tag.clone(),
        container: None,
        running: None,
    };
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    // The runtime contract the Dockerfile writes down.
    let config = |field: &str| {
        stdout_of(&[
            "inspect",
            "--type",
            "image",
            "--format",
            &format!("{{{{range .Docker.Config.{field}}}}}<{{{{.}}}}>{{{{end}}}}"),
            &tag,
        ])
    };
    assert_eq!(config("Entrypoint"), "</usr/local/bin/dt-users>");
    assert_eq!(config("Cmd"), "<serve><--host><0.0.0.0><--port><8000>");
    assert_eq!(
        config("Healthcheck.Test"),
        "<CMD><dt-users-probe><8000></health/live>"
    );
    let plain = |field: &str| {
        stdout_of(&[
            "inspect",
            "--type",
            "image",
            "--format",
            &format!("{{{{.Docker.Config.{field}}}}}"),
            &tag,
        ])
    };
    assert_eq!(plain("User"), "10001:10001");
    assert_eq!(plain("WorkingDir"), "/var/lib/dt-users");

    let container = stdout_of(&["from", &tag]);
    image.container = Some(container.clone());
    // Commands in the container run as the image's user.
    assert_eq!(
        stdout_of(&[
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            "bash",
            "-c",
            "echo $UID"
        ]),
        "10001"
    );

    // The service with no configuration (the embedded default, in the data directory the user
    // owns), on a free port of the host's network.
    let port = free_port().to_string();
    image.running = Some(
        Command::new("buildah")
            .args(["--storage-driver", "vfs", "run", "--isolation", "chroot"])
            .args([&container, "--", "/usr/local/bin/dt-users", "serve"])
            .args(["--host", "127.0.0.1", "--port", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        answers_within(&format!("{base}/health/live"), Duration::from_secs(60)).await,
        "the image's service never answered"
    );

    // The image's health probe passes against it, and fails where nothing answers.
    let probe = |port: &str| {
        buildah(&[
            "run",
            "--isolation",
            "chroot",
            &container,
            "--",
            "dt-users-probe",
            port,
            "/health/live",
        ])
    };
    let healthy = probe(&port);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    assert!(!probe(&free_port().to_string()).status.success());

    // It works, writing its SQLite file as the unprivileged user.
    assert_eq!(register_ada(&base).await, StatusCode::CREATED);
}
