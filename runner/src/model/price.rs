//! Prices per model, turning a turn's token counts into micro-USD so cost
//! budgets can bind. Prices are configuration, not code: providers change
//! them, and a local model costs nothing.
use std::collections::BTreeMap;

use serde::Deserialize;

/// The price of one model, in US dollars per million tokens — which is the
/// same number as micro-USD per token.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens (cache reads and writes included).
    pub input_usd_per_mtok: f64,
    /// USD per million output tokens.
    pub output_usd_per_mtok: f64,
}

/// Prices keyed by model name. A key also prices every model whose name it
/// begins (`claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`); the
/// longest matching key wins.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct Prices(pub BTreeMap<String, Price>);

impl Prices {
    /// The price of `model`, if one is configured.
    pub fn lookup(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.0.get(model) {
            return Some(*p);
        }
        self.0
            .iter()
            .filter(|(key, _)| model.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(_, p)| *p)
    }

    /// What `input` and `output` tokens of `model` cost, in micro-USD,
    /// rounded up; 0 for a model without a price.
    pub fn cost_micro_usd(&self, model: &str, input: u64, output: u64) -> u64 {
        let Some(p) = self.lookup(model) else {
            return 0;
        };
        let micro = input as f64 * p.input_usd_per_mtok + output as f64 * p.output_usd_per_mtok;
        // `as` saturates: a negative or absurd price cannot wrap around.
        micro.ceil() as u64
    }

    /// The first price that is negative or not a number, by model name.
    pub(crate) fn invalid(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, p)| {
                ![p.input_usd_per_mtok, p.output_usd_per_mtok]
                    .iter()
                    .all(|v| v.is_finite() && *v >= 0.0)
            })
            .map(|(k, _)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices() -> Prices {
        let mut m = BTreeMap::new();
        m.insert(
            "claude-sonnet".to_string(),
            Price {
                input_usd_per_mtok: 1.0,
                output_usd_per_mtok: 1.0,
            },
        );
        m.insert(
            "claude-sonnet-4-5".to_string(),
            Price {
                input_usd_per_mtok: 3.0,
                output_usd_per_mtok: 15.0,
            },
        );
        Prices(m)
    }

    #[test]
    fn cost_is_micro_usd_per_token_and_the_longest_prefix_wins() {
        let p = prices();
        // 1000 in at $3/Mtok = 3000 micro-USD; 100 out at $15/Mtok = 1500.
        assert_eq!(
            p.cost_micro_usd("claude-sonnet-4-5-20250929", 1000, 100),
            4500
        );
        assert_eq!(p.cost_micro_usd("claude-sonnet-4-0", 10, 10), 20);
        assert_eq!(
            p.cost_micro_usd("llama3", 1_000_000, 1_000_000),
            0,
            "an unpriced model costs nothing"
        );
    }

    #[test]
    fn fractions_round_up_and_bad_prices_are_found() {
        let mut p = prices();
        p.0.insert(
            "haiku".into(),
            Price {
                input_usd_per_mtok: 0.25,
                output_usd_per_mtok: 1.25,
            },
        );
        assert_eq!(p.cost_micro_usd("haiku", 1, 0), 1);
        assert_eq!(p.invalid(), None);
        p.0.insert(
            "bad".into(),
            Price {
                input_usd_per_mtok: f64::NAN,
                output_usd_per_mtok: 1.0,
            },
        );
        assert_eq!(p.invalid(), Some("bad"));
    }
}
