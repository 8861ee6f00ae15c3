//! Philox4x32-10 (Salmon et al., SC'11, "Parallel random numbers: as easy as 1, 2, 3"): a
//! counter-based RNG. A draw is a pure function of (key, counter), so a sequence's random
//! numbers are keyed by (seed, position) and do not depend on what else shares the batch or
//! on how many numbers other code drew before; kernels/sampling.cu computes the same words.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// The four output words of Philox4x32 with 10 rounds.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..10 {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c0);
        let p1 = u64::from(M1) * u64::from(c2);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// A uniform number in [0, 1) with 53 random bits from two words (as the kernel computes it).
fn unit_f64(hi: u32, lo: u32) -> f64 {
    let bits = (u64::from(hi >> 5) << 26) | u64::from(lo >> 6);
    bits as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The two uniform numbers of a sequence at `position` (the index of the token being
/// chosen): the first decides a sampled token or a draft's acceptance, the second the
/// token drawn after a rejected draft.
pub fn uniforms(seed: u64, position: u64) -> [f64; 2] {
    let w = philox4x32_10(
        [position as u32, (position >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    [unit_f64(w[0], w[1]), unit_f64(w[2], w[3])]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random123_known_answers() {
        // Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0]
            ),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn uniforms_are_in_range_and_roughly_uniform() {
        let n = 20_000;
        let mut buckets = [0usize; 10];
        for p in 0..n {
            for u in uniforms(7, p) {
                assert!((0.0..1.0).contains(&u));
                buckets[(u * 10.0) as usize] += 1;
            }
        }
        for b in buckets {
            assert!((b as f64 - 4000.0).abs() < 300.0, "{buckets:?}");
        }
        assert_ne!(uniforms(7, 3), uniforms(8, 3));
        assert_ne!(uniforms(7, 3), uniforms(7, 4));
    }
}
