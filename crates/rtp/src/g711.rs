//! G.711 µ-law and A-law (ITU-T G.711): the segment arithmetic of the recommendation,
//! checked exhaustively below, and the two 256-byte transcoding tables computed from it
//! at compile time (a relay converting a packet looks each byte up; it never goes
//! through linear PCM).
//!
//! Samples are 16-bit linear PCM; µ-law uses the top 14 bits, A-law the top 13.

/// Segment end points for µ-law (on the 14-bit magnitude plus bias).
const ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
/// Segment end points for A-law (on the 13-bit magnitude).
const ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
const ULAW_BIAS: i32 = 0x84;
const ULAW_CLIP: i32 = 8159;

const fn segment(value: i32, ends: &[i32; 8]) -> usize {
    let mut i = 0;
    while i < 8 {
        if value <= ends[i] {
            return i;
        }
        i += 1;
    }
    8
}

/// Encodes one linear sample to µ-law.
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 2;
    let mask = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    let pcm = if pcm > ULAW_CLIP { ULAW_CLIP } else { pcm } + (ULAW_BIAS >> 2);
    match segment(pcm, &ULAW_SEG_END) {
        8 => 0x7F ^ mask,
        seg => (((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0x0F)) as u8 ^ mask,
    }
}

/// Decodes one µ-law byte to a linear sample.
pub const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let t = ((((u & 0x0F) as i32) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 {
        ULAW_BIAS - t
    } else {
        t - ULAW_BIAS
    }) as i16
}

/// Encodes one linear sample to A-law.
pub const fn linear_to_alaw(sample: i16) -> u8 {
    let mut pcm = (sample as i32) >> 3;
    let mask = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    match segment(pcm, &ALAW_SEG_END) {
        8 => 0x7F ^ mask,
        seg => {
            let quant = if seg < 2 {
                (pcm >> 1) & 0x0F
            } else {
                (pcm >> seg) & 0x0F
            };
            (((seg as i32) << 4) | quant) as u8 ^ mask
        }
    }
}

/// Decodes one A-law byte to a linear sample.
pub const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    match (a & 0x70) >> 4 {
        0 => t += 8,
        1 => t += 0x108,
        seg => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

/// Transcodes µ-law to A-law through linear, as a media relay does when two legs share
/// no codec (the definition [`ULAW_TO_ALAW`] is built from).
pub const fn ulaw_to_alaw(code: u8) -> u8 {
    linear_to_alaw(ulaw_to_linear(code))
}

/// Transcodes A-law to µ-law through linear.
pub const fn alaw_to_ulaw(code: u8) -> u8 {
    linear_to_ulaw(alaw_to_linear(code))
}

/// Every byte of one law in the other (`to_alaw`: µ-law to A-law, else A-law to µ-law).
const fn table(to_alaw: bool) -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if to_alaw {
            ulaw_to_alaw(i as u8)
        } else {
            alaw_to_ulaw(i as u8)
        };
        i += 1;
    }
    t
}

/// µ-law byte to A-law byte, computed at compile time.
pub static ULAW_TO_ALAW: [u8; 256] = table(true);
/// A-law byte to µ-law byte, computed at compile time.
pub static ALAW_TO_ULAW: [u8; 256] = table(false);

/// Converts a G.711 payload in place between the laws through one of the tables.
pub fn transcode(payload: &mut [u8], table: &[u8; 256]) {
    for b in payload {
        *b = table[usize::from(*b)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ulaw_code_round_trips_except_negative_zero() {
        for code in 0..=255u8 {
            let back = linear_to_ulaw(ulaw_to_linear(code));
            // 0x7F is µ-law's negative zero: it decodes to 0, which encodes as 0xFF.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(back, expected, "code {code:#04x}");
        }
    }

    #[test]
    fn every_alaw_code_round_trips() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "code {code:#04x}"
            );
        }
    }

    #[test]
    fn reference_points_of_the_recommendation() {
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
    }

    /// Every 16-bit sample decodes back within half a quantisation step of its level, plus
    /// the truncation of the 14/13-bit input; and decoding
    /// is monotonic. A wrong segment or bit anywhere breaks one of these.
    #[test]
    fn exhaustive_quantisation_error_is_within_half_a_step() {
        for (encode, decode, name) in [
            (
                linear_to_ulaw as fn(i16) -> u8,
                ulaw_to_linear as fn(u8) -> i16,
                "ulaw",
            ),
            (linear_to_alaw, alaw_to_linear, "alaw"),
        ] {
            let mut levels: Vec<i32> = (0..=255u8).map(|c| i32::from(decode(c))).collect();
            levels.sort();
            levels.dedup();
            let slack = if name == "ulaw" { 4 } else { 8 };
            for s in i16::MIN..=i16::MAX {
                let x = i32::from(s);
                let got = i32::from(decode(encode(s)));
                let i = levels
                    .binary_search(&got)
                    .expect("decoded values are levels");
                // Beyond the outermost level the signal clips; nothing to bound.
                if (x > got && i + 1 == levels.len()) || (x < got && i == 0) {
                    continue;
                }
                // The level's own step: the wider of its two gaps (the two differ only
                // where a segment ends).
                let below = i.checked_sub(1).map_or(0, |j| got - levels[j]);
                let above = levels.get(i + 1).map_or(0, |n| n - got);
                let half_step = below.max(above) / 2;
                assert!(
                    (got - x).abs() <= half_step + slack,
                    "{name}: {s} -> {got} (half step {half_step})"
                );
            }
            let mut last = i32::MIN;
            for s in (i16::MIN..=i16::MAX).step_by(7) {
                let v = i32::from(decode(encode(s)));
                assert!(v >= last, "{name}: not monotonic at {s}");
                last = v;
            }
        }
    }

    #[test]
    fn the_tables_are_the_arithmetic_for_every_byte() {
        for code in 0..=255u8 {
            assert_eq!(ULAW_TO_ALAW[usize::from(code)], ulaw_to_alaw(code));
            assert_eq!(ALAW_TO_ULAW[usize::from(code)], alaw_to_ulaw(code));
        }
        let mut payload: Vec<u8> = (0..=255).collect();
        transcode(&mut payload, &ULAW_TO_ALAW);
        assert_eq!(payload, (0..=255u8).map(ulaw_to_alaw).collect::<Vec<_>>());
    }

    #[test]
    fn transcoding_keeps_the_signal() {
        for code in 0..=255u8 {
            let a = ulaw_to_alaw(code);
            let diff = (i32::from(ulaw_to_linear(code)) - i32::from(alaw_to_linear(a))).abs();
            let level = i32::from(ulaw_to_linear(code)).abs();
            assert!(
                diff <= 16 + level / 16,
                "µ {code:#04x} -> A {a:#04x}: off by {diff}"
            );
        }
    }
}
