//! Metrics: a lock-free latency histogram, the Prometheus text exposition of a node's status
//! and of its durable machines' saves, and the optional admin listener that serves it
//! (`/metrics`, `/healthz`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::message::{NodeStatus, SourceStatus};
#[cfg(feature = "net")]
pub use admin::{render_saves, serve_admin};

/// Buckets: up to 1 µs, 2 µs, 4 µs, ... 2^24 µs (about 17 s), then everything above.
const BUCKETS: usize = 26;

/// A latency histogram with power-of-two microsecond buckets; recording is two atomic adds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one latency into its power-of-two bucket (microseconds).
    pub fn record(&self, elapsed: std::time::Duration) {
        let us = elapsed.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - us.saturating_sub(1).leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative) and the sum in microseconds.
    pub fn snapshot(&self) -> (Vec<u64>, u64) {
        (
            self.buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            self.sum_us.load(Ordering::Relaxed),
        )
    }

    /// The upper bound (µs) of the bucket holding quantile `q`, 0 when empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let (counts, _) = self.snapshot();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 1u64 << i;
            }
        }
        1u64 << (BUCKETS - 1)
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text format of a node's status and mutation latency histogram.
pub fn render(status: &NodeStatus, latency: &Histogram) -> String {
    let node = escape(&status.node);
    let mut out = String::new();
    for (name, value) in &status.counters {
        let (kind, metric) = match name.as_str() {
            "clients" => ("gauge", "am_clients".to_owned()),
            n if n.starts_with("mutation_") => continue,
            n => ("counter", format!("am_{n}_total")),
        };
        let _ = writeln!(
            out,
            "# TYPE {metric} {kind}\n{metric}{{node=\"{node}\"}} {value}"
        );
    }
    // One series per source: every source, or only mirrors (those with an upstream).
    let mut per_source =
        |metric: &str, kind: &str, mirrors_only: bool, value: &dyn Fn(&SourceStatus) -> u64| {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for s in status
                .sources
                .iter()
                .filter(|s| !mirrors_only || s.upstream.is_some())
            {
                let _ = writeln!(
                    out,
                    "{metric}{{node=\"{node}\",source=\"{}\"}} {}",
                    escape(&s.name),
                    value(s)
                );
            }
        };
    per_source("am_source_clients", "gauge", false, &|s| {
        u64::from(s.clients)
    });
    per_source("am_source_queue_tick", "gauge", false, &|s| s.queue_tick);
    per_source("am_upstream_ready", "gauge", true, &|s| {
        u64::from(s.connection.as_deref() == Some("ready"))
    });
    per_source("am_upstream_reconnects_total", "counter", true, &|s| {
        s.reconnects
    });
    per_source(
        "am_upstream_mutations_retried_total",
        "counter",
        true,
        &|s| s.mutations_retried,
    );
    per_source(
        "am_upstream_mutations_expired_total",
        "counter",
        true,
        &|s| s.mutations_expired,
    );
    per_source("am_upstream_mutations_waiting", "gauge", true, &|s| {
        s.mutations_waiting
    });
    let (counts, sum_us) = latency.snapshot();
    let _ = writeln!(out, "# TYPE am_mutation_latency_seconds histogram");
    let mut cumulative = 0;
    for (i, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = if i == BUCKETS - 1 {
            "+Inf".to_owned()
        } else {
            format!("{}", (1u64 << i) as f64 / 1e6)
        };
        let _ = writeln!(
            out,
            "am_mutation_latency_seconds_bucket{{node=\"{node}\",le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(
        out,
        "am_mutation_latency_seconds_sum{{node=\"{node}\"}} {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "am_mutation_latency_seconds_count{{node=\"{node}\"}} {cumulative}"
    );
    out
}

/// What needs the `net` feature: durable machines' counters and the admin listener.
#[cfg(feature = "net")]
mod admin {
    use std::fmt::Write as _;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tracing::{debug, info};

    use super::escape;
    use crate::durable::DurableStats;
    use crate::http;

    /// The Prometheus text of a node's durable machines: saves and failed saves, per machine.
    pub fn render_saves(node: &str, machines: &[(String, DurableStats)]) -> String {
        if machines.is_empty() {
            return String::new();
        }
        let node = escape(node);
        let mut out = String::new();
        for (metric, failures) in [
            ("am_state_saves_total", false),
            ("am_state_save_failures_total", true),
        ] {
            let _ = writeln!(out, "# TYPE {metric} counter");
            for (machine, stats) in machines {
                let _ = writeln!(
                    out,
                    "{metric}{{node=\"{node}\",source=\"{}\"}} {}",
                    escape(machine),
                    if failures {
                        stats.failures
                    } else {
                        stats.saves
                    }
                );
            }
        }
        out
    }

    /// Serves `/metrics` (Prometheus text) and `/healthz` on a plain HTTP listener until
    /// `shutdown`; returns the bound address.
    pub async fn serve_admin(
        address: &str,
        metrics: Arc<dyn Fn() -> String + Send + Sync>,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(address).await?;
        let local = listener.local_addr()?;
        info!(%local, "admin listener: /metrics, /healthz");
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut stream, _)) = accepted else {
                    continue;
                };
                let metrics = metrics.clone();
                // A request and its answer within their bounds: a client that stops reading
                // does not hold the task for ever.
                let limit = Duration::from_secs(5) + http::ANSWER_TIMEOUT;
                tokio::spawn(tokio::time::timeout(limit, async move {
                    let head =
                        tokio::time::timeout(Duration::from_secs(5), http::read_head(&mut stream))
                            .await;
                    let result = match head {
                        Ok(Ok((request, _))) => {
                            match (request.method.as_str(), request.path.as_str()) {
                                ("GET", "/metrics") => {
                                    http::respond(
                                        &mut stream,
                                        200,
                                        "text/plain; version=0.0.4",
                                        &metrics(),
                                    )
                                    .await
                                }
                                ("GET", "/healthz") => {
                                    http::respond(&mut stream, 200, "text/plain", "ok\n").await
                                }
                                _ => {
                                    http::respond(
                                        &mut stream,
                                        404,
                                        "text/plain",
                                        "try /metrics or /healthz\n",
                                    )
                                    .await
                                }
                            }
                        }
                        _ => Ok(()),
                    };
                    if let Err(e) = result {
                        debug!(error = %e, "admin request failed");
                    }
                }));
            }
        });
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_and_quantiles() {
        let h = Histogram::default();
        for us in [1, 3, 3, 100, 5000] {
            h.record(Duration::from_micros(us));
        }
        let (counts, sum) = h.snapshot();
        assert_eq!(sum, 5107);
        assert_eq!((counts[0], counts[2], counts[7], counts[13]), (1, 2, 1, 1));
        assert_eq!(h.quantile_us(0.5), 4);
        assert_eq!(h.quantile_us(0.99), 8192);
    }

    #[test]
    fn renders_prometheus_text() {
        let status = NodeStatus {
            node: "root".into(),
            counters: vec![("clients".into(), 2), ("frames_out".into(), 10)],
            ..NodeStatus::default()
        };
        let h = Histogram::default();
        h.record(Duration::from_micros(3));
        let text = render(&status, &h);
        assert!(
            text.contains("# TYPE am_clients gauge\nam_clients{node=\"root\"} 2"),
            "{text}"
        );
        assert!(text.contains("am_frames_out_total{node=\"root\"} 10"));
        assert!(
            text.contains("am_mutation_latency_seconds_bucket{node=\"root\",le=\"0.000004\"} 1")
        );
        assert!(text.contains("am_mutation_latency_seconds_count{node=\"root\"} 1"));
    }
}
