//! The relay's configuration file: a `[relay]` table, in a file of its own or inside a
//! topology file (so one file describes a node and the relay in front of it).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{RelayConfig, Target};
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
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
    let file: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(0, |s| {
            text[..s.start.min(text.len())].lines().count().max(1)
        });
        format!("{name}:{line}: {}", e.message().trim())
    })?;
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
