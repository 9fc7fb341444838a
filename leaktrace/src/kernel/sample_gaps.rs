//! The pool of gaps between samples that sampling mode hands the kernel.
use leaktrace_common::{EXPONENTIAL_POOL, GOLDEN_GAMMA, mix64};

/// A seed for the sampling gaps when none is given: the clock.
pub(super) fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(GOLDEN_GAMMA, |d| d.as_nanos() as u64)
}

/// `EXPONENTIAL_POOL` gaps between samples, exponentially distributed with
/// the given mean (inverse transform: -mean * ln(U), U uniform in (0, 1]),
/// from a generator seeded by `seed`: the same seed gives the same pool.
/// The kernel picks among them at random; with 4096 of them the
/// distribution's shape is kept.
pub(crate) fn exponential_gaps(mean: u32, seed: u64) -> Vec<u32> {
    // xorshift64* must not start at 0; mix64 is a bijection with mix64(0) = 0.
    let mut state = match mix64(seed) {
        0 => GOLDEN_GAMMA,
        mixed => mixed,
    };
    (0..EXPONENTIAL_POOL)
        .map(|_| {
            // xorshift64*: plenty for drawing sample gaps.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
            let uniform = (bits as f64 + 1.0) / (1u64 << 53) as f64;
            let gap = -f64::from(mean) * uniform.ln();
            gap.clamp(1.0, f64::from(u32::MAX)) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_gaps_have_the_mean_and_shape() {
        let gaps = exponential_gaps(512 * 1024, 1);
        assert_eq!(gaps.len(), EXPONENTIAL_POOL as usize);
        let mean = gaps.iter().map(|&g| f64::from(g)).sum::<f64>() / gaps.len() as f64;
        // Standard error of the mean of 4096 exponentials: mean / 64.
        assert!((mean / 524_288.0 - 1.0).abs() < 0.06, "mean {mean}");
        // P(gap > mean) = 1/e for an exponential.
        let above = gaps.iter().filter(|&&g| g > 512 * 1024).count() as f64 / 4096.0;
        assert!((above - (-1.0f64).exp()).abs() < 0.03, "{above}");
    }

    #[test]
    fn exponential_gaps_are_fixed_by_their_seed() {
        let gaps = exponential_gaps(4096, 42);
        assert_eq!(gaps, exponential_gaps(4096, 42));
        assert_ne!(gaps, exponential_gaps(4096, 43));
        // Seed 0 is a seed like any other (the generator cannot start at 0).
        assert_eq!(exponential_gaps(4096, 0), exponential_gaps(4096, 0));
        assert_ne!(exponential_gaps(4096, 0), gaps);
    }
}
