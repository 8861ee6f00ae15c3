//! When each request is sent: a Poisson process at `--request-rate` (gamma-distributed gaps
//! when `--burstiness` is not 1), or all at once for an infinite rate; seeded, so runs repeat.

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, Gamma};

use super::error::{BenchError, Result};

/// Send offsets in seconds from the start of the run, one per request, non-decreasing.
///
/// Gaps are Gamma(shape = burstiness, scale = 1 / (rate * burstiness)): mean 1/rate, and for
/// burstiness 1 the exponential gaps of a Poisson process. As vLLM does, the offsets are then
/// rescaled so the last one falls at exactly `n / rate`: a plain sum drifts by a few percent
/// between seeds, which would show up as throughput noise.
pub fn arrival_offsets(n: usize, rate: f64, burstiness: f64, seed: u64) -> Result<Vec<f64>> {
    if rate.is_nan() || rate <= 0.0 {
        return Err(BenchError::Config(format!(
            "request rate must be positive, got {rate}"
        )));
    }
    if rate.is_infinite() || n == 0 {
        return Ok(vec![0.0; n]);
    }
    if burstiness.is_nan() || burstiness <= 0.0 {
        return Err(BenchError::Config(format!(
            "burstiness must be positive, got {burstiness}"
        )));
    }
    let gamma = Gamma::new(burstiness, 1.0 / (rate * burstiness))
        .map_err(|e| BenchError::Config(format!("gamma distribution: {e}")))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut offsets: Vec<f64> = (0..n)
        .map(|_| {
            t += gamma.sample(&mut rng);
            t
        })
        .collect();
    let last = offsets[n - 1];
    if last > 0.0 {
        let k = n as f64 / rate / last;
        offsets.iter_mut().for_each(|x| *x *= k);
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        assert_eq!(
            arrival_offsets(3, f64::INFINITY, 1.0, 0).unwrap(),
            vec![0.0; 3]
        );
    }

    #[test]
    fn poisson_offsets_are_seeded_sorted_and_end_at_n_over_rate() {
        let a = arrival_offsets(1000, 4.0, 1.0, 7).unwrap();
        assert_eq!(a, arrival_offsets(1000, 4.0, 1.0, 7).unwrap());
        assert_ne!(a, arrival_offsets(1000, 4.0, 1.0, 8).unwrap());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!((a[999] - 250.0).abs() < 1e-9);
        // Exponential gaps: the coefficient of variation is about 1 (a constant rate has 0).
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let s = crate::bench::stats::Summary::of(&gaps);
        assert!((s.std / s.mean - 1.0).abs() < 0.15, "cv {}", s.std / s.mean);
    }

    #[test]
    fn rejects_bad_rates() {
        assert!(arrival_offsets(3, 0.0, 1.0, 0).is_err());
        assert!(arrival_offsets(3, 1.0, 0.0, 0).is_err());
    }
}
