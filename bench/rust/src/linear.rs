//! aprender-core's `QuantizedLinear` (file `quantization_linear.rs`, not in the seed),
//! as qatcore's DESIGN.md describes the Rust behaviour:
//! - weights row-major (out_features, in_features), `weights_q[o*in + i]`;
//! - per-tensor symmetric weight scale `max|w| / qmax` with qmax taken from the config's
//!   `quant_range()` (so an asymmetric config gives 255), 1.0 when all weights are zero;
//! - weights `(w / scale).round().clamp(-127, 127) as i8` (round half away from zero);
//! - bias `(b / weight_scale).round() as i32` (quantized at the weight scale only, never
//!   re-quantized by `set_input_scale`);
//! - `forward_quantized` = naive triple loop of int32 accumulators, batch = len / in
//!   (a ragged tail is silently dropped, as in Rust).
//!
//! Accumulation wraps on int32 overflow like a Rust release build (explicitly, so a debug
//! build behaves the same).

use crate::quant::FakeQuantConfig;

#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    pub weight_scale: f32,
    pub input_scale: f32,
    pub output_scale: f32,
    pub weights_q: Vec<i8>,
    pub bias_q: Option<Vec<i32>>,
    pub in_features: usize,
    pub out_features: usize,
}

#[allow(dead_code)]
impl QuantizedLinear {
    pub fn from_float(
        weights: &[f32],
        bias: Option<&[f32]>,
        in_features: usize,
        out_features: usize,
        config: &FakeQuantConfig,
    ) -> Self {
        let (_, qmax) = config.quant_range();
        let max_abs = weights.iter().fold(0.0f32, |acc, &w| acc.max(w.abs()));
        let weight_scale = if max_abs > 0.0 { max_abs / qmax } else { 1.0 };
        let weights_q: Vec<i8> = weights
            .iter()
            .map(|&w| (w / weight_scale).round().clamp(-127.0, 127.0) as i8)
            .collect();
        let bias_q = bias.map(|b| {
            b.iter()
                .map(|&v| (v / weight_scale).round() as i32)
                .collect::<Vec<i32>>()
        });
        Self {
            weight_scale,
            input_scale: 1.0,
            output_scale: weight_scale,
            weights_q,
            bias_q,
            in_features,
            out_features,
        }
    }

    pub fn set_input_scale(&mut self, scale: f32) {
        self.input_scale = scale;
        self.output_scale = self.weight_scale * scale;
    }

    pub fn output_scale(&self) -> f32 {
        self.output_scale
    }

    /// Raw int32 accumulators `Σ_i w_q[o*in+i]·x_q[b*in+i] + bias_q[o]`, shape (batch, out).
    pub fn forward_quantized(&self, input: &[i8]) -> Vec<i32> {
        let inf = self.in_features;
        let outf = self.out_features;
        let batch = if inf == 0 { 0 } else { input.len() / inf };
        let mut output = vec![0i32; batch * outf];
        for b in 0..batch {
            let x = &input[b * inf..(b + 1) * inf];
            for o in 0..outf {
                let w = &self.weights_q[o * inf..(o + 1) * inf];
                let mut acc: i32 = 0;
                for i in 0..inf {
                    acc = acc.wrapping_add((w[i] as i32).wrapping_mul(x[i] as i32));
                }
                if let Some(ref bias) = self.bias_q {
                    acc = acc.wrapping_add(bias[o]);
                }
                output[b * outf + o] = acc;
            }
        }
        output
    }
}
