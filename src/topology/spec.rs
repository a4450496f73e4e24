//! A topology file as written: the TOML tables with the spans of the values errors point at.
//! Nothing here is checked beyond TOML's types; `resolve` turns it into a plan.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::machine::StateDef;
use crate::proto::acl::Acl;

use super::DriverSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    #[serde(default)]
    pub schemas: BTreeMap<String, Spanned<SchemaSpec>>,
    #[serde(default)]
    pub nodes: Vec<Spanned<NodeSpec>>,
    /// The relay in front of these nodes: read by am-relay (relay::config), not here.
    #[serde(default, rename = "relay")]
    _relay: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SchemaSpec {
    #[serde(default)]
    pub states: Vec<Spanned<StateDef>>,
    /// A schema file (a `[[states]]` list), relative to the topology file.
    pub file: Option<Spanned<String>>,
}

/// A schema file: `[[states]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SchemaFileSpec {
    #[serde(default)]
    pub states: Vec<Spanned<StateDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub listen: Vec<Spanned<String>>,
    #[serde(default)]
    pub machines: Vec<Spanned<MachineSpec>>,
    /// Offer zstd to clients that ask (default true).
    pub compression: Option<bool>,
    /// At most one push per interval per client (default: push at once); planned into the
    /// node's limits.
    pub push_interval_ms: Option<u64>,
    pub limits: Option<Spanned<LimitsSpec>>,
    pub tls: Option<Spanned<TlsFileSpec>>,
    /// Who is let in, what each client sees and may mutate.
    pub acl: Option<Spanned<Acl>>,
    /// A plain HTTP listener for /metrics (Prometheus text) and /healthz, e.g. "127.0.0.1:9100".
    pub admin: Option<Spanned<String>>,
    /// Where the node's root machines keep their state (relative to the topology file).
    pub state_dir: Option<Spanned<String>>,
    /// Send telemetry of every machine to this collector (`am-node dbg`), e.g.
    /// "tcp://127.0.0.1:6831".
    pub debug: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsSpec {
    pub max_clients: Option<Spanned<usize>>,
    pub max_frame: Option<Spanned<usize>>,
    pub handshake_timeout_ms: Option<Spanned<u64>>,
    pub idle_timeout_ms: Option<Spanned<u64>>,
    pub keepalive_ms: Option<Spanned<u64>>,
}

/// A node's `tls` table: `cert` and `key` to present, `ca` to verify peers with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsFileSpec {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    #[serde(default)]
    pub client_auth: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MachineSpec {
    pub name: Spanned<String>,
    /// A root machine's schema (a name under `[schemas]`); for a mirror, the schema it expects.
    pub schema: Option<Spanned<String>>,
    /// What a mirror mirrors: `node`, `node/machine`, or an endpoint `tcp://host:port/machine`.
    pub upstream: Option<Spanned<String>>,
    /// A mirror tracks only these states.
    pub track: Option<Vec<String>>,
    /// A mirror asks its upstream for compression (default true).
    pub compression: Option<bool>,
    /// The upstream's token, when it needs one.
    pub token: Option<String>,
    /// A mirror's mutations wait this long for a link that is down (0: fail at once).
    pub retry_deadline_ms: Option<u64>,
    /// At most this many of a mirror's mutations wait for the link.
    pub retry_max_waiting: Option<usize>,
    /// A root machine activates these states when its node starts.
    #[serde(default)]
    pub start: Vec<String>,
    pub driver: Option<Spanned<DriverSpec>>,
    /// Where this root machine keeps its state, over its node's `state_dir`.
    pub state_dir: Option<Spanned<String>>,
}
