//! The relay's configuration file: a `[relay]` table, in a file of its own or inside a
//! topology file (so one file describes a node and the relay in front of it).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{RelayConfig, Target};
use crate::topology::toml_file::TomlFile;
use crate::transport::{Endpoint, TlsConfig, TransportConfig};

#[derive(Debug, Deserialize)]
struct File {
    relay: Option<RelaySpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySpec {
    listen: Option<String>,
    #[serde(default)]
    targets: Vec<TargetSpec>,
    #[serde(default)]
    origins: Vec<String>,
    #[serde(default)]
    hosts: Vec<String>,
    token: Option<String>,
    max_connections: Option<usize>,
    max_message: Option<usize>,
    idle_timeout_ms: Option<u64>,
    tls: Option<TlsSpec>,
    /// The WebAssembly module pages load (default: where scripts/build-wasm.sh leaves it).
    wasm: Option<String>,
    /// Names pages may offer machines under, for nodes to mirror at ws://relay/listen/NAME.
    #[serde(default)]
    offers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetSpec {
    name: String,
    endpoint: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    cert: Option<String>,
    key: Option<String>,
    ca: Option<String>,
}

/// Reads the `[relay]` table of a file into a configuration (paths relative to the file).
pub fn load(path: &Path) -> Result<RelayConfig, String> {
    let source =
        TomlFile::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    configure(path, &source)
}

/// Reads the `[relay]` table of `text`, as if it were the file at `path`.
pub fn parse(path: &Path, text: &str) -> Result<RelayConfig, String> {
    configure(path, &TomlFile::new(path.display().to_string(), text))
}

fn configure(path: &Path, source: &TomlFile<'_>) -> Result<RelayConfig, String> {
    let name = source.name();
    let file: File = source.parse().map_err(|e| e.to_string())?;
    let spec = file
        .relay
        .ok_or_else(|| format!("{name}: has no [relay] table; see topologies/browser.toml"))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut config = RelayConfig::default();
    if let Some(listen) = spec.listen {
        config.listen = listen
            .parse()
            .map_err(|e| format!("{name}: relay listen: {e}"))?;
    }
    for target in spec.targets {
        let endpoint: Endpoint = target
            .endpoint
            .parse()
            .map_err(|e| format!("{name}: target {}: {e}", target.name))?;
        config.targets.push(Target {
            name: target.name,
            endpoint,
        });
    }
    config.origins = spec.origins;
    config.offers = spec.offers;
    config.hosts = spec.hosts;
    config.token = spec.token;
    if let Some(n) = spec.max_connections {
        config.max_connections = n;
    }
    if let Some(n) = spec.max_message {
        config.max_message = n;
    }
    if let Some(ms) = spec.idle_timeout_ms {
        config.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(wasm) = spec.wasm {
        config.wasm = base.join(wasm);
    }
    if let Some(tls) = spec.tls {
        let at = |p: &Option<String>| p.as_deref().map(|p| base.join(p));
        let tls = TlsConfig::from_pem_files(
            at(&tls.cert).as_deref(),
            at(&tls.key).as_deref(),
            at(&tls.ca).as_deref(),
            false,
        )
        .map_err(|e| format!("{name}: relay tls: {e}"))?;
        config.transport = TransportConfig::with_tls(tls);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_is_reported_on_its_own_line() {
        let text =
            "[relay]\nlisten = \"ws://127.0.0.1:7480\"\nlisten_to = \"ws://127.0.0.1:7481\"\n";
        let e = parse(Path::new("relay.toml"), text).expect_err("unknown key");
        assert!(
            e.starts_with("relay.toml:3:1: unknown field `listen_to`"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_a_relay_table_says_where_to_look() {
        let e = parse(Path::new("node.toml"), "[[nodes]]\nname = \"a\"\n").expect_err("no relay");
        assert!(e.contains("no [relay] table"), "{e}");
    }
}
