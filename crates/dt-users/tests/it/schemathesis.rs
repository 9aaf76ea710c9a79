//! Schemathesis (from PyPI) against `/openapi.json` of a running instance: every check,
//! authenticated; zero server errors and zero schema violations.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemathesis.toml");

/// `schemathesis` from the PATH, or from the scripts directory of the `python3` that
/// installed it.
fn schemathesis_command() -> String {
    let on_path = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return "schemathesis".into();
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    format!(
        "{}/schemathesis",
        String::from_utf8_lossy(&scripts.stdout).trim()
    )
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let dir = std::env::temp_dir().join(format!("dt-users-st-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = crate::mail::free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_dt-users"));
    command
        .args(["serve", "--port", &port.to_string()])
        .current_dir(&dir)
        .env("DT_USERS_RATE_LIMIT_ENABLED", "false")
        .env("DT_USERS_ARGON2_MEMORY_KIB", "1024")
        .env("DT_USERS_ARGON2_ITERATIONS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("DT_USERS_") && !key.starts_with("DT_USERS_TEST") {
            command.env_remove(key);
        }
    }
    let mut server = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let register = json!({"email": "fuzz@example.com", "username": "fuzzer", "password": "schemathesis passphrase"});
    client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&register)
        .send()
        .await
        .unwrap();
    let login = json!({"email": "fuzz@example.com", "password": "schemathesis passphrase"});
    let tokens: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&login)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap().to_owned();

    // Logout is left out: it would end the session that authenticates the rest of the run (it
    // is covered by `logout_sessions.rs`).
    let scratch = dir.clone();
    let output = tokio::task::spawn_blocking(move || {
        // Run in the scratch directory: Schemathesis keeps a cache in its working directory.
        Command::new(schemathesis_command())
            .current_dir(&scratch)
            .args([
                "--config-file",
                CONFIG,
                "--no-color",
                "run",
                &format!("{base}/openapi.json"),
            ])
            .args([
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--exclude-path",
                "/api/v1/auth/logout",
            ])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .output()
            .expect("schemathesis (pip install schemathesis)")
    })
    .await
    .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let report = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect();
    eprintln!("{}", summary.join("\n"));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(report.contains("passed"), "{report}");
}
