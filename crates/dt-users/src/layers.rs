//! The import graph of the crate, checked: data flows one way (HTTP and the command consumer
//! → use-cases → database and outbox → relays → Kafka and the job queue), and no module imports
//! one above it. A test reads every source file (test code aside) and fails on an import
//! outside the table below; changing the table is a change of the architecture.

/// Each top-level module, and the modules of this crate it may import. `startup` (the
/// composition root) may import everything; nothing imports it.
const ALLOWED: &[(&str, &[&str])] = &[
    // Foundations: no imports within the crate.
    ("runner", &[]),
    ("sessions", &[]),
    ("email", &[]),
    ("federation", &[]),
    ("security", &["sessions"]),
    ("config", &["security"]),
    ("telemetry", &["config"]),
    // The use-cases: they know nothing of HTTP, Kafka, the job queue or the settings.
    (
        "service",
        &["runner", "security", "sessions", "email", "federation"],
    ),
    // The relays, the worker, beat and the consumer: given what they use, never the use-cases.
    ("events", &["config", "runner"]),
    ("jobs", &["config", "runner", "email", "security"]),
    // The HTTP edge.
    ("health", &["events", "security", "sessions"]),
    (
        "http",
        &["service", "health", "security", "sessions", "telemetry"],
    ),
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::ALLOWED;

    /// Every `crate::<module>` a file names outside its test code.
    fn imports(source: &str) -> BTreeSet<String> {
        let code = source.split("\n#[cfg(test)]").next().unwrap_or_default();
        let mut found = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = code.get(i + "crate::".len()..).unwrap_or_default();
            if rest.starts_with('{') {
                let group = rest.split('}').next().unwrap_or_default();
                for item in group.trim_start_matches('{').split(',') {
                    let module: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    found.insert(module);
                }
            } else {
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(module);
            }
        }
        found.retain(|m| !m.is_empty());
        found
    }

    fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push((
                    path.display().to_string(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }

    #[test]
    fn no_module_imports_one_above_it() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&root, &mut files);
        let mut checked = 0;
        let mut violations = Vec::new();
        for (path, source) in &files {
            let relative = path
                .strip_prefix(&root.display().to_string())
                .unwrap_or(path)
                .trim_start_matches('/');
            let module = relative
                .split('/')
                .next()
                .unwrap_or_default()
                .trim_end_matches(".rs");
            if matches!(module, "lib" | "main" | "startup" | "layers")
                || relative.ends_with("/tests.rs")
            {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .find(|(m, _)| *m == module)
                .map(|(_, allowed)| *allowed)
                .unwrap_or_else(|| panic!("{relative}: module {module} is not in the table"));
            for import in imports(source) {
                checked += 1;
                if import != module && !allowed.contains(&import.as_str()) {
                    violations.push(format!("{relative}: {module} imports {import}"));
                }
            }
        }
        assert!(checked > 50, "only {checked} imports found");
        assert!(
            violations.is_empty(),
            "imports running back up:\n{}",
            violations.join("\n")
        );
    }

    #[test]
    fn the_scan_sees_single_and_grouped_imports() {
        let found = imports(
            "use crate::service::App;\nuse crate::{http::x, jobs};\nfn f() { crate::events::g() }\n\
             #[cfg(test)]\nmod tests { use crate::startup; }",
        );
        let expected: BTreeSet<String> = ["service", "http", "jobs", "events"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(found, expected);
    }
}
