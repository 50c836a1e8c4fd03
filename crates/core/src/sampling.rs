//! Choosing the next token from a row of logits; shared by every executor.
//!
//! The order is vLLM's: penalties (repetition over prompt and output, presence and frequency
//! over the output), then greedy argmax when `temperature` is 0; otherwise temperature, top-k,
//! top-p, min-p, and a draw from the request's own RNG (seeded from `seed` when given, so the
//! same seed and inputs give the same tokens). Log-probabilities, when asked for, are those of
//! the model's raw logits, as OpenAI and vLLM report them.
//!
//! Cost is O(vocab) per token for every setting: top-k uses selection, not a sort, and top-p
//! sorts only a prefix of the candidates, doubling it until it holds the nucleus.

use std::collections::HashMap;

use rand::Rng;
use rand::rngs::StdRng;

use crate::request::SamplingParams;

/// The log-probability of a sampled token and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TokenLogprobs {
    /// Log-probability of the sampled token.
    pub logprob: f32,
    /// The `n` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// A sampled token.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The token id.
    pub token: u32,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
}

/// Samples tokens; holds scratch buffers reused across calls.
#[derive(Debug, Default)]
pub struct Sampler {
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// Picks the next token of a request whose tokens so far are `prompt` then `output`.
    /// `logits` is modified in place.
    pub fn sample(
        &mut self,
        logits: &mut [f32],
        params: &SamplingParams,
        prompt: &[u32],
        output: &[u32],
        rng: &mut StdRng,
    ) -> Sampled {
        let raw = params
            .logprobs
            .map(|n| (log_sum_exp(logits), self.top_n(logits, n as usize)));
        // Penalties change the row; keep the raw logits when logprobs must be reported.
        let raw_row = (raw.is_some() && has_penalties(params)).then(|| logits.to_vec());
        apply_penalties(logits, params, prompt, output);
        let token = if params.is_greedy() {
            argmax(logits)
        } else {
            self.sample_stochastic(logits, params, rng)
        };
        let logprobs = raw.map(|(lse, top)| {
            let raw_logit = raw_row.as_deref().unwrap_or(logits)[token as usize];
            TokenLogprobs {
                logprob: raw_logit - lse,
                top: top.into_iter().map(|(t, l)| (t, l - lse)).collect(),
            }
        });
        Sampled { token, logprobs }
    }

    /// The raw log-probability of `token` in `logits` and the `n` most likely tokens' (for a
    /// prompt token, which is given rather than sampled).
    pub fn logprobs_of(&mut self, logits: &[f32], token: u32, n: u32) -> TokenLogprobs {
        let lse = log_sum_exp(logits);
        let top = self.top_n(logits, n as usize);
        TokenLogprobs {
            logprob: logits
                .get(token as usize)
                .map_or(f32::NEG_INFINITY, |l| l - lse),
            top: top.into_iter().map(|(t, l)| (t, l - lse)).collect(),
        }
    }

    /// The `n` largest logits, largest first.
    fn top_n(&mut self, logits: &[f32], n: usize) -> Vec<(u32, f32)> {
        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let n = n.min(c.len());
        if n == 0 {
            return Vec::new();
        }
        if n < c.len() {
            c.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
        }
        c.truncate(n);
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        c.clone()
    }

    fn sample_stochastic(&mut self, logits: &[f32], p: &SamplingParams, rng: &mut StdRng) -> u32 {
        let inv_t = 1.0 / p.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let c = &mut self.candidates;
        c.clear();
        // Unnormalised probabilities; the most likely token has weight 1.
        c.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, ((l - max) * inv_t).exp())),
        );
        let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let top_k = p.top_k as usize;
        if top_k > 0 && top_k < c.len() {
            c.select_nth_unstable_by(top_k - 1, desc);
            c.truncate(top_k);
        }
        if p.top_p < 1.0 {
            let target = p.top_p * c.iter().map(|x| x.1).sum::<f32>();
            let mut k = c.len().min(64);
            loop {
                if k < c.len() {
                    c.select_nth_unstable_by(k - 1, desc);
                }
                c[..k].sort_unstable_by(desc);
                let mut mass = 0.0;
                let cut = c[..k].iter().position(|x| {
                    mass += x.1;
                    mass >= target
                });
                if let Some(j) = cut {
                    c.truncate(j + 1);
                    break;
                }
                if k == c.len() {
                    break;
                }
                k = (k * 2).min(c.len());
            }
        }
        if p.min_p > 0.0 {
            // The top candidate always survives top-k and top-p, and its weight is 1.
            c.retain(|x| x.1 >= p.min_p);
        }
        let total: f32 = c.iter().map(|x| x.1).sum();
        let mut u = rng.random::<f32>() * total;
        for &(token, w) in c.iter() {
            if u < w {
                return token;
            }
            u -= w;
        }
        // Rounding left `u` just past the end: the last candidate it walked over.
        c.last().map_or_else(|| argmax(logits), |x| x.0)
    }
}

/// Index of the largest value; the lowest index among ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    // Summed in f64: prompt logprobs add up over thousands of tokens into a perplexity.
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    max + sum.ln() as f32
}

fn has_penalties(p: &SamplingParams) -> bool {
    p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0
}

fn apply_penalties(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if p.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in prompt.iter().chain(output) {
            if seen.insert(t)
                && let Some(l) = logits.get_mut(t as usize)
            {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, n) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * n as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams::default();
        f(&mut p);
        p
    }

    /// Logits whose softmax is `probs`.
    fn logits_of(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    fn frequencies(logits: &[f32], p: &SamplingParams, draws: usize) -> Vec<f32> {
        let mut sampler = Sampler::default();
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            let t = sampler
                .sample(&mut logits.to_vec(), p, &[], &[], &mut rng)
                .token;
            counts[t as usize] += 1;
        }
        counts.iter().map(|&c| c as f32 / draws as f32).collect()
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut l = vec![0.1, 3.0, -1.0, 3.0];
        let s = Sampler::default().sample(&mut l, &SamplingParams::greedy(), &[], &[], &mut rng);
        assert_eq!(s.token, 1);
        assert_eq!(s.logprobs, None);
    }

    #[test]
    fn draws_follow_the_distribution() {
        let f = frequencies(
            &logits_of(&[0.5, 0.3, 0.2]),
            &SamplingParams::default(),
            20_000,
        );
        for (got, want) in f.iter().zip([0.5, 0.3, 0.2]) {
            assert!((got - want).abs() < 0.02, "{f:?}");
        }
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let l = logits_of(&[0.5, 0.3, 0.2]);
        let cold = frequencies(&l, &params(|p| p.temperature = 0.25), 5_000);
        assert!(cold[0] > 0.85, "{cold:?}");
        let hot = frequencies(&l, &params(|p| p.temperature = 2.0), 5_000);
        assert!(hot[0] < 0.45 && hot[2] > 0.25, "{hot:?}");
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let probs = [0.05, 0.5, 0.3, 0.15];
        let l = logits_of(&probs);
        let k1 = frequencies(&l, &params(|p| p.top_k = 1), 500);
        assert_eq!(k1[1], 1.0);
        let k2 = frequencies(&l, &params(|p| p.top_k = 2), 10_000);
        assert_eq!(k2[0] + k2[3], 0.0);
        assert!((k2[1] - 0.5 / 0.8).abs() < 0.02, "{k2:?}");
        // The nucleus of 0.7 is {1, 2}: 0.5 alone is short of it.
        let nucleus = frequencies(&l, &params(|p| p.top_p = 0.7), 10_000);
        assert_eq!(nucleus[0] + nucleus[3], 0.0, "{nucleus:?}");
        assert!(nucleus[2] > 0.3, "{nucleus:?}");
        // min_p 0.5 keeps tokens with at least half the top probability: 0.5 and 0.3.
        let min_p = frequencies(&l, &params(|p| p.min_p = 0.5), 10_000);
        assert_eq!(min_p[0] + min_p[3], 0.0, "{min_p:?}");
    }

    #[test]
    fn top_p_over_a_large_vocabulary_grows_its_prefix() {
        // 1,000 equally likely tokens: the nucleus of 0.5 needs 500 of them, past the first 64.
        let l = vec![0.0; 1000];
        let f = frequencies(&l, &params(|p| p.top_p = 0.5), 20_000);
        let kept = f.iter().filter(|&&x| x > 0.0).count();
        assert!((450..=500).contains(&kept), "kept {kept}");
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens() {
        let l = logits_of(&[0.25; 4]);
        let run = |seed| {
            let mut sampler = Sampler::default();
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64)
                .map(|_| {
                    let p = SamplingParams::default();
                    sampler.sample(&mut l.clone(), &p, &[], &[], &mut rng).token
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn penalties_discourage_seen_tokens() {
        let mut rng = StdRng::seed_from_u64(0);
        let mut sampler = Sampler::default();
        let greedy = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams::greedy();
            f(&mut p);
            p
        };
        // Repetition penalty divides positive logits of prompt and output tokens.
        let mut l = vec![2.0, 1.5, 0.0];
        let p = greedy(|p| p.repetition_penalty = 2.0);
        assert_eq!(sampler.sample(&mut l, &p, &[0], &[], &mut rng).token, 1);
        assert_eq!(l, vec![1.0, 1.5, 0.0]);
        // Negative logits are multiplied, so they fall too.
        let mut l = vec![-1.0, -1.5];
        assert_eq!(sampler.sample(&mut l, &p, &[], &[0], &mut rng).token, 1);
        // Frequency counts repeats in the output; presence counts once; the prompt is exempt.
        let mut l = vec![2.0, 1.0];
        let p = greedy(|p| p.frequency_penalty = 0.4);
        assert_eq!(
            sampler
                .sample(&mut l, &p, &[1, 1], &[0, 0, 0], &mut rng)
                .token,
            1
        );
        assert!((l[0] - 0.8).abs() < 1e-6 && l[1] == 1.0);
        let mut l = vec![2.0, 1.0];
        let p = greedy(|p| p.presence_penalty = 1.5);
        assert_eq!(sampler.sample(&mut l, &p, &[], &[0, 0], &mut rng).token, 1);
        assert!((l[0] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn logprobs_are_raw_log_softmax_with_sorted_top() {
        let mut rng = StdRng::seed_from_u64(0);
        let probs = [0.1, 0.6, 0.3];
        let mut l = logits_of(&probs);
        let p = SamplingParams {
            logprobs: Some(2),
            repetition_penalty: 100.0,
            ..SamplingParams::greedy()
        };
        // The penalty moves the choice to token 2, but logprobs are of the raw logits.
        let s = Sampler::default().sample(&mut l, &p, &[1], &[], &mut rng);
        assert_eq!(s.token, 2);
        let lp = s.logprobs.expect("asked for");
        assert!((lp.logprob - 0.3f32.ln()).abs() < 1e-5);
        assert_eq!(lp.top.len(), 2);
        assert_eq!((lp.top[0].0, lp.top[1].0), (1, 2));
        assert!((lp.top[0].1 - 0.6f32.ln()).abs() < 1e-5);
    }
}
