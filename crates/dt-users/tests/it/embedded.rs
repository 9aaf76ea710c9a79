//! The binary with no configuration at all: SQLite under ./var, sessions in memory, a key
//! generated on first start; data survives a restart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::PASSWORD;
use crate::process::register_ada;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(dir: &std::path::Path, port: u16) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dt-users"));
    command
        .args(["serve", "--port", &port.to_string()])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars() {
        if key.starts_with("DT_USERS_") {
            command.env_remove(key);
        }
    }
    let server = Server(command.spawn().unwrap());
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("http://127.0.0.1:{port}/health/ready"))
            .send()
            .await
            .is_ok()
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the embedded server did not start");
}

#[tokio::test]
async fn the_binary_runs_with_no_configuration_and_keeps_its_data() {
    let dir = std::env::temp_dir().join(format!(
        "dt-users-embedded-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    let server = start(&dir, port).await;
    let ready: Value = client
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["database"]["backend"], "sqlite");
    assert_eq!(ready["checks"]["sessions"]["backend"], "memory");
    assert_eq!(register_ada(&base).await, StatusCode::CREATED);
    let login = |client: reqwest::Client| {
        let base = base.clone();
        async move {
            let response = client
                .post(format!("{base}/api/v1/auth/login"))
                .json(&json!({"email": "ada@example.com", "password": PASSWORD}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let token = login(client.clone()).await;
    let me = client
        .get(format!("{base}/api/v1/users/current"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    assert!(dir.join("var/dt-users.db").exists());
    assert!(dir.join("var/signing-key.pem").exists());
    drop(server);

    let _server = start(&dir, port).await;
    let token = login(client.clone()).await;
    let me: Value = client
        .get(format!("{base}/api/v1/users/current"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "ada");
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
}
