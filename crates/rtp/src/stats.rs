//! Receiver statistics of one RTP stream: loss from sequence numbers (RFC 3550 A.3) and
//! interarrival jitter (RFC 3550 A.8). Arrival times are passed in (microseconds on any
//! monotonic clock), so the arithmetic is testable without sockets.

/// Statistics of packets received from one source.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    pub packets: u64,
    pub bytes: u64,
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    /// Previous transit time in timestamp units and the jitter estimate (units × 16).
    transit: Option<i64>,
    jitter16: i64,
    ssrc: u32,
    /// `packets` when the current source started.
    base_packets: u64,
}

/// A stream's sequence and jitter state, for counting to go on elsewhere (the media
/// node's kernel path) and come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Continuation {
    pub ssrc: u32,
    pub max_seq: u16,
    pub cycles: u32,
    /// Jitter estimate in timestamp units × 16.
    pub jitter16: i64,
}

impl ReceiverStats {
    /// The state to go on counting from, once a packet arrived.
    pub fn continuation(&self) -> Option<Continuation> {
        self.started.then_some(Continuation {
            ssrc: self.ssrc,
            max_seq: self.max_seq,
            cycles: self.cycles,
            jitter16: self.jitter16,
        })
    }

    /// Takes back the counting done elsewhere from [`Self::continuation`]: `packets`
    /// and `bytes` more, the sequence and jitter state as it was left. The next
    /// packet's transit starts afresh (one jitter sample is skipped).
    pub fn resume(&mut self, state: Continuation, packets: u64, bytes: u64) {
        if !self.started || state.ssrc != self.ssrc {
            return;
        }
        self.max_seq = state.max_seq;
        self.cycles = state.cycles;
        self.jitter16 = state.jitter16;
        self.packets += packets;
        self.bytes += bytes;
        self.transit = None;
    }

    /// The SSRC of the stream now being received, once a packet arrived.
    pub fn ssrc(&self) -> Option<u32> {
        self.started.then_some(self.ssrc)
    }

    /// Records a packet; `clock_rate` is the payload's RTP clock (8000 for G.711).
    pub fn record(
        &mut self,
        seq: u16,
        timestamp: u32,
        ssrc: u32,
        len: usize,
        arrival_us: u64,
        clock_rate: u32,
    ) {
        if !self.started || ssrc != self.ssrc {
            // A new source (or a restart): start counting afresh for sequence and jitter,
            // keep the totals.
            self.started = true;
            self.ssrc = ssrc;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
            self.cycles = 0;
            self.transit = None;
            self.base_packets = self.packets;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if seq < self.max_seq {
                    self.cycles += 1 << 16;
                }
                self.max_seq = seq;
            }
        }
        self.packets += 1;
        self.bytes += len as u64;
        let arrival = (arrival_us as i128 * i128::from(clock_rate) / 1_000_000) as i64;
        let transit = arrival - i64::from(timestamp);
        if let Some(prev) = self.transit {
            let d = (transit - prev).abs();
            self.jitter16 += d - ((self.jitter16 + 8) >> 4);
        }
        self.transit = Some(transit);
    }

    /// Packets expected from the sequence numbers minus packets received (never negative:
    /// duplicates do not make up for losses here).
    pub fn lost(&self) -> u64 {
        if !self.started {
            return 0;
        }
        let extended_max = u64::from(self.cycles) + u64::from(self.max_seq);
        let expected = extended_max + 1 - u64::from(self.base_seq);
        expected.saturating_sub(self.packets - self.base_packets)
    }

    /// Interarrival jitter in milliseconds.
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        (self.jitter16 as f64 / 16.0) * 1000.0 / f64::from(clock_rate.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stats: &mut ReceiverStats, seqs: &[u16], jitter_us: &[u64]) {
        for (i, &seq) in seqs.iter().enumerate() {
            let ts = u32::from(seq).wrapping_mul(160);
            let arrival = u64::from(seq) * 20_000 + jitter_us.get(i).copied().unwrap_or(0);
            stats.record(seq, ts, 1, 172, arrival, 8000);
        }
    }

    #[test]
    fn counting_continued_elsewhere_comes_back_whole() {
        // 100..150 here, 150..200 elsewhere with 160 and 170 lost, then 200..210 here.
        let mut s = ReceiverStats::default();
        feed(&mut s, &(100..150).collect::<Vec<_>>(), &[]);
        let mut state = s.continuation().unwrap();
        let elsewhere: Vec<u16> = (150..200).filter(|q| *q != 160 && *q != 170).collect();
        state.max_seq = 199;
        s.resume(state, elsewhere.len() as u64, 172 * elsewhere.len() as u64);
        feed(&mut s, &(200..210).collect::<Vec<_>>(), &[]);
        assert_eq!(s.packets, 50 + 48 + 10);
        assert_eq!(s.lost(), 2);
        // Another source's state is not taken.
        let mut other = state;
        other.ssrc = 2;
        other.max_seq = 5;
        s.resume(other, 1000, 1000);
        assert_eq!(s.packets, 108);
    }

    #[test]
    fn a_clean_stream_has_no_loss_and_no_jitter() {
        let mut s = ReceiverStats::default();
        feed(&mut s, &(100..200).collect::<Vec<_>>(), &[]);
        assert_eq!((s.packets, s.bytes, s.lost()), (100, 17_200, 0));
        assert!(s.jitter_ms(8000) < 0.01);
    }

    #[test]
    fn gaps_count_as_loss_across_the_sequence_wrap() {
        let mut s = ReceiverStats::default();
        let seqs: Vec<u16> = (65_530u16..=65_535)
            .chain(0..10)
            .filter(|q| *q != 65_533 && *q != 4)
            .collect();
        // Arrival follows the sequence, unwrapped.
        for (i, &seq) in seqs.iter().enumerate() {
            let n = if seq >= 65_530 {
                u64::from(seq - 65_530)
            } else {
                u64::from(seq) + 6
            };
            s.record(seq, (n * 160) as u32, 1, 172, n * 20_000, 8000);
            let _ = i;
        }
        assert_eq!(s.packets, 14);
        assert_eq!(s.lost(), 2);
    }

    #[test]
    fn uneven_arrival_shows_as_jitter() {
        let mut s = ReceiverStats::default();
        let seqs: Vec<u16> = (0..200).collect();
        let wobble: Vec<u64> = (0..200)
            .map(|i| if i % 2 == 0 { 0 } else { 10_000 })
            .collect();
        feed(&mut s, &seqs, &wobble);
        // Every transit changes by 10 ms: the estimate converges to 10 ms.
        assert!(
            (s.jitter_ms(8000) - 10.0).abs() < 0.5,
            "{}",
            s.jitter_ms(8000)
        );
    }
}
