//! aprender-core 0.29.1 `nn::quantization`: `FakeQuantConfig`, `ObserverMethod`,
//! `QuantObserver`, `FakeQuantize`, written again from the seed
//! (`shared/seed/quantization.rs`) over plain slices instead of autograd tensors.
//!
//! Every float operation is the seed's, in the seed's order: f32 arithmetic,
//! `f32::min`/`f32::max` folds, `f32::round` (half away from zero), `f32::clamp`,
//! a full `sort_by(partial_cmp)` for percentiles with the index products in f32, and
//! sequential f32 sums for mean/std. rustc never contracts `a * b + c` into an FMA, so
//! a `-C target-cpu=native` build gives the same bits as the generic one.

/// Fake quantization configuration for QAT (seed: `FakeQuantConfig`).
#[derive(Debug, Clone)]
pub struct FakeQuantConfig {
    pub bits: usize,
    pub symmetric: bool,
    pub learnable: bool,
    pub observer: ObserverMethod,
}

/// Method for observing tensor statistics (seed: `ObserverMethod`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ObserverMethod {
    MinMax,
    Percentile,
    MovingAverage,
    MeanStd,
}

impl ObserverMethod {
    /// Parse qatcore's enum value (`min_max`, `percentile`, `moving_average`, `mean_std`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "min_max" | "minmax" => Some(Self::MinMax),
            "percentile" => Some(Self::Percentile),
            "moving_average" => Some(Self::MovingAverage),
            "mean_std" => Some(Self::MeanStd),
            _ => None,
        }
    }
}

impl Default for FakeQuantConfig {
    fn default() -> Self {
        Self {
            bits: 8,
            symmetric: true,
            learnable: false,
            observer: ObserverMethod::MinMax,
        }
    }
}

#[allow(dead_code)]
impl FakeQuantConfig {
    pub fn int8() -> Self {
        Self::default()
    }

    pub fn int4() -> Self {
        Self {
            bits: 4,
            ..Self::default()
        }
    }

    pub fn with_learnable(mut self) -> Self {
        self.learnable = true;
        self
    }

    pub fn with_observer(mut self, observer: ObserverMethod) -> Self {
        self.observer = observer;
        self
    }

    /// (qmin, qmax): symmetric ±(2^(bits-1) - 1), asymmetric [0, 2^bits - 1].
    pub fn quant_range(&self) -> (f32, f32) {
        if self.symmetric {
            let max = (1 << (self.bits - 1)) - 1;
            (-(max as f32), max as f32)
        } else {
            let max = (1 << self.bits) - 1;
            (0.0, max as f32)
        }
    }
}

/// Observer for tracking tensor statistics (seed: `QuantObserver`).
#[derive(Debug, Clone)]
pub struct QuantObserver {
    min_val: f32,
    max_val: f32,
    avg_min: f32,
    avg_max: f32,
    count: usize,
    averaging_constant: f32,
    method: ObserverMethod,
}

#[allow(dead_code)]
impl QuantObserver {
    pub fn new(method: ObserverMethod) -> Self {
        Self {
            min_val: f32::INFINITY,
            max_val: f32::NEG_INFINITY,
            avg_min: 0.0,
            avg_max: 0.0,
            count: 0,
            averaging_constant: 0.01,
            method,
        }
    }

    /// Update the statistics with one batch (empty batches are ignored).
    pub fn observe(&mut self, data: &[f32]) {
        if data.is_empty() {
            return;
        }
        match self.method {
            ObserverMethod::MinMax => {
                let lo = data.iter().fold(f32::INFINITY, |acc, &v| acc.min(v));
                let hi = data.iter().fold(f32::NEG_INFINITY, |acc, &v| acc.max(v));
                self.min_val = self.min_val.min(lo);
                self.max_val = self.max_val.max(hi);
            }
            ObserverMethod::Percentile => {
                // 0.1 % and 99.9 % order statistics of this batch, by a full stable sort.
                let mut sorted = data.to_vec();
                sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                let n = sorted.len();
                let p_low = (n as f32 * 0.001).floor() as usize;
                let p_high = ((n as f32 * 0.999).ceil() as usize).min(n - 1);
                self.min_val = self.min_val.min(sorted[p_low]);
                self.max_val = self.max_val.max(sorted[p_high]);
            }
            ObserverMethod::MovingAverage => {
                let lo = data.iter().fold(f32::INFINITY, |acc, &v| acc.min(v));
                let hi = data.iter().fold(f32::NEG_INFINITY, |acc, &v| acc.max(v));
                if self.count == 0 {
                    self.avg_min = lo;
                    self.avg_max = hi;
                } else {
                    let c = self.averaging_constant;
                    self.avg_min = (1.0 - c) * self.avg_min + c * lo;
                    self.avg_max = (1.0 - c) * self.avg_max + c * hi;
                }
                self.min_val = self.avg_min;
                self.max_val = self.avg_max;
            }
            ObserverMethod::MeanStd => {
                // Sequential f32 sums, as the seed: these drift on large batches.
                let mean: f32 = data.iter().sum::<f32>() / data.len() as f32;
                let variance: f32 =
                    data.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / data.len() as f32;
                let std = variance.sqrt();
                let lo = mean - 3.0 * std;
                let hi = mean + 3.0 * std;
                self.min_val = self.min_val.min(lo);
                self.max_val = self.max_val.max(hi);
            }
        }
        self.count += 1;
    }

    pub fn range(&self) -> (f32, f32) {
        (self.min_val, self.max_val)
    }

    pub fn reset(&mut self) {
        self.min_val = f32::INFINITY;
        self.max_val = f32::NEG_INFINITY;
        self.avg_min = 0.0;
        self.avg_max = 0.0;
        self.count = 0;
    }

    /// (scale, zero_point) for `config` from the observed range.
    pub fn compute_qparams(&self, config: &FakeQuantConfig) -> (f32, f32) {
        let (qmin, qmax) = config.quant_range();
        let (min_val, max_val) = self.range();
        if config.symmetric {
            let max_abs = min_val.abs().max(max_val.abs());
            let scale = if max_abs > 0.0 { max_abs / qmax } else { 1.0 };
            (scale, 0.0)
        } else {
            let scale = if (max_val - min_val).abs() > 1e-10 {
                (max_val - min_val) / (qmax - qmin)
            } else {
                1.0
            };
            let zero_point = qmin - min_val / scale;
            (scale, zero_point)
        }
    }
}

/// Fake quantization layer for QAT (seed: `FakeQuantize` + its `Module::forward`).
#[derive(Debug)]
pub struct FakeQuantize {
    config: FakeQuantConfig,
    observer: QuantObserver,
    scale: f32,
    zero_point: f32,
    calibrating: bool,
}

#[allow(dead_code)]
impl FakeQuantize {
    pub fn new(config: FakeQuantConfig) -> Self {
        let observer = QuantObserver::new(config.observer);
        Self {
            config,
            observer,
            scale: 1.0,
            zero_point: 0.0,
            calibrating: true,
        }
    }

    pub fn enable_calibration(&mut self) {
        self.calibrating = true;
    }

    pub fn disable_calibration(&mut self) {
        self.calibrating = false;
        let (scale, zp) = self.observer.compute_qparams(&self.config);
        self.scale = scale;
        self.zero_point = zp;
    }

    /// Observe (when calibrating), refresh the qparams, quantize -> dequantize.
    pub fn fake_quantize(&mut self, data: &[f32]) -> Vec<f32> {
        if self.calibrating {
            self.observer.observe(data);
            let (scale, zp) = self.observer.compute_qparams(&self.config);
            self.scale = scale;
            self.zero_point = zp;
        }
        let (qmin, qmax) = self.config.quant_range();
        data.iter()
            .map(|&x| {
                let q = (x / self.scale + self.zero_point).round().clamp(qmin, qmax);
                (q - self.zero_point) * self.scale
            })
            .collect()
    }

    /// `Module::forward`: quantize -> dequantize with the current (frozen) parameters.
    pub fn forward(&self, data: &[f32]) -> Vec<f32> {
        let (qmin, qmax) = self.config.quant_range();
        data.iter()
            .map(|&x| {
                let q = (x / self.scale + self.zero_point).round().clamp(qmin, qmax);
                (q - self.zero_point) * self.scale
            })
            .collect()
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    pub fn zero_point(&self) -> f32 {
        self.zero_point
    }

    pub fn config(&self) -> &FakeQuantConfig {
        &self.config
    }

    pub fn observer(&self) -> &QuantObserver {
        &self.observer
    }
}
