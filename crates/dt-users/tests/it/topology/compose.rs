//! compose.yaml as compose reads it: YAML (anchors and merge keys) parsed by PyYAML, every
//! `${VAR}`, `${VAR:-default}`, `${VAR:?error}` resolved from .env.example alone (never from
//! the test's own environment), and the dt-users services — those on the image of the
//! `x-dt-users` anchor — reduced to what the test runs: command, environment, dependencies,
//! health check and restart policy.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Deserialize;

const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../compose.yaml");
const ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.env.example");

/// Run as `python3 -c RESOLVE compose.yaml .env.example`; prints the services as JSON.
const RESOLVE: &str = r##"
import json, re, shlex, sys
import yaml

compose_path, env_path = sys.argv[1], sys.argv[2]

def read_env_file(path):
    # KEY=VALUE lines; `#` comments; a double-quoted value may span lines and reads \n, \" and
    # \\; a single-quoted one is taken as written; an unquoted one ends at ` #`.
    values, lines = {}, open(path, encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        match = re.match(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if not match:
            sys.exit(f"{path}: not KEY=VALUE: {line!r}")
        key, value = match.groups()
        if value[:1] in ("'", '"'):
            quote = value[0]
            body = value[1:]
            while not re.search(r'(?<!\\)' + re.escape(quote) + r"\s*(#.*)?$", body):
                if i >= len(lines):
                    sys.exit(f"{path}: {key}: no closing {quote}")
                body += "\n" + lines[i]
                i += 1
            body = re.sub(re.escape(quote) + r"\s*(#.*)?$", "", body)
            if quote == '"':
                body = re.sub(r'\\(.)', lambda m: {"n": "\n", '"': '"', "\\": "\\"}.get(m.group(1), "\\" + m.group(1)), body)
            value = body
        else:
            value = re.sub(r"\s+#.*$", "", value).strip()
        values[key] = value
    return values

env = read_env_file(env_path)
reference = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")

def interpolate(text):
    def one(m):
        if m.group(1):
            return "$"
        name, op, arg = m.group(2) or m.group(5), m.group(3), m.group(4)
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op is None:
            if value is None:
                sys.exit(f"compose.yaml uses ${{{name}}}, which .env.example does not set")
            return value
        if op.endswith("-"):
            return interpolate(arg) if missing else value
        if missing:
            sys.exit(f"compose.yaml requires {name} ({arg}), which .env.example does not set")
        return value
    return reference.sub(one, text)

def resolve(node):
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [resolve(n) for n in node]
    if isinstance(node, dict):
        return {k: resolve(v) for k, v in node.items()}
    return node

def scalar(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

doc = resolve(yaml.safe_load(open(compose_path, encoding="utf-8")))
image = doc["x-dt-users"]["image"]
services = {}
for name, service in doc["services"].items():
    if service.get("image") != image:
        continue
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(e.split("=", 1) if "=" in e else (e, None) for e in environment)
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    depends_on = service.get("depends_on") or {}
    if isinstance(depends_on, list):
        depends_on = {d: {"condition": "service_started"} for d in depends_on}
    healthcheck = service.get("healthcheck") or {}
    test = None if healthcheck.get("disable") else healthcheck.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    services[name] = {
        "entrypoint": service.get("entrypoint"),
        "command": [scalar(c) for c in command],
        "environment": {k: scalar(v) for k, v in environment.items()},
        "depends_on": {k: (v or {}).get("condition", "service_started") for k, v in depends_on.items()},
        "healthcheck": None if test is None else [scalar(t) for t in test],
        "restart": scalar(service.get("restart", "no")),
    }
json.dump({"services": services}, sys.stdout)
"##;

/// A dt-users service of compose.yaml, its values resolved.
#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    /// Set only if the service replaces the image's `ENTRYPOINT ["dt-users"]`.
    pub entrypoint: Option<serde_json::Value>,
    /// The arguments of `dt-users`.
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Service name → condition (`service_healthy`, `service_completed_successfully`, …).
    pub depends_on: BTreeMap<String, String>,
    /// The health check's `test` (`["CMD", …]`); none for a one-shot service.
    pub healthcheck: Option<Vec<String>>,
    pub restart: String,
}

impl Service {
    /// A service that runs once and exits (`restart: "no"`), as opposed to one that serves.
    pub fn one_shot(&self) -> bool {
        self.restart == "no"
    }

    /// The value the command line gives `flag` (`--port 9000` → `9000`).
    pub fn flag(&self, flag: &str) -> Option<&str> {
        let at = self.command.iter().position(|a| a == flag)?;
        self.command.get(at + 1).map(String::as_str)
    }
}

/// The dt-users services of compose.yaml, by name.
pub fn dt_users_services() -> BTreeMap<String, Service> {
    let output = Command::new("python3")
        .args(["-c", RESOLVE, COMPOSE_FILE, ENV_FILE])
        .output()
        .expect("python3 with PyYAML (installed with schemathesis)");
    assert!(
        output.status.success(),
        "reading compose.yaml with .env.example failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    #[derive(Deserialize)]
    struct Resolved {
        services: BTreeMap<String, Service>,
    }
    let resolved: Resolved = serde_json::from_slice(&output.stdout).unwrap();
    resolved.services
}

/// The services in an order that respects `depends_on` (dependencies first; ties by name).
pub fn start_order(services: &BTreeMap<String, Service>) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services
            .iter()
            .find(|(name, service)| {
                !order.contains(name)
                    && service
                        .depends_on
                        .keys()
                        .all(|d| !services.contains_key(d) || order.contains(d))
            })
            .map(|(name, _)| name.clone())
            .unwrap_or_else(|| panic!("compose.yaml: a dependency cycle among {order:?}"));
        order.push(next);
    }
    order
}
