//! Connection limits: how many connections one source address may hold and how many the
//! process holds in all, so no client can exhaust file descriptors or memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Limits for stream transports.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Connections one IP address may hold at once.
    pub per_source: usize,
    /// Connections the process holds at once.
    pub total: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Once a message has started, it must be complete within this time (slowloris).
    pub message_timeout: Duration,
    /// Largest message accepted on any transport.
    pub max_message: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_source: 64,
            total: 10_000,
            idle_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(20),
            max_message: switchyard_sip::framing::DEFAULT_MAX_MESSAGE,
        }
    }
}

/// Counts open connections per source; a permit releases its slot when dropped.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    config: Arc<LimitsConfig>,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// One admitted connection.
#[derive(Debug)]
pub struct Permit {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionLimits {
    pub fn new(config: LimitsConfig) -> Self {
        ConnectionLimits {
            config: Arc::new(config),
            counts: Arc::default(),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<Permit, &'static str> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if c.total >= self.config.total {
            return Err("total connection limit reached");
        }
        let n = c.per_source.entry(ip).or_default();
        if *n >= self.config.per_source {
            return Err("per-source connection limit reached");
        }
        *n += 1;
        c.total += 1;
        Ok(Permit {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if let Some(n) = c.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_and_total_limits_hold_and_release() {
        let limits = ConnectionLimits::new(LimitsConfig {
            per_source: 2,
            total: 3,
            ..LimitsConfig::default()
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_err());
        let _p3 = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_err(), "total reached");
        drop(p1);
        let again = limits.admit(a);
        assert!(again.is_ok());
        assert_eq!(limits.open(), 3);
        drop(again);
        assert_eq!(limits.open(), 2);
    }
}
