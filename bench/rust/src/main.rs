//! `qatcore-ref`: std-only Rust reference of aprender-core's QAT module for qatcore.
//!
//! ```text
//! qatcore-ref golden SPEC_FILE OUT_FILE
//! qatcore-ref bench --op OP --n N --repeat R [--bits B]
//!     OP in minmax | percentile | moving_average | mean_std | fake_quantize
//! qatcore-ref bench --op linear --m M --k K --n N --repeat R [--bits B]
//! qatcore-ref linear W_F32 BIAS_F32|- IN_FEATURES OUT_FEATURES BITS SYMMETRIC X_I8 INPUT_SCALE OUT_PREFIX
//! ```
//!
//! `golden` reads a text spec (one command per line, `#` comments):
//! ```text
//! case NAME bits=8 symmetric=1 observer=min_max   # starts a fresh FakeQuantize
//! fq PATH        # fake_quantize(batch)  (observes while calibrating)
//! fwd PATH       # Module::forward(batch) with the current parameters
//! disable        # disable_calibration()
//! enable         # enable_calibration()
//! ```
//! where PATH is a raw little-endian f32 file. It writes OUT_FILE as JSON lines, one per
//! command, with the observer range and the qparams after the command as hex f32 bits
//! (`min`, `max`, `scale`, `zp`), and for `fq`/`fwd` the output's element offset `off` and
//! length `len` in OUT_FILE.bin (raw little-endian f32, outputs concatenated).
//!
//! `bench` prints one JSON line:
//! `{"op":..,"n":..,"repeat":..,"median_s":..,"min_s":..,"max_s":..}` (+ `"m","k"` for
//! linear), after one untimed warm-up call.
//!
//! `linear` runs `QuantizedLinear::from_float` + `set_input_scale` + `forward_quantized`
//! and writes OUT_PREFIX.json (weight/input/output scales as hex bits, shapes),
//! OUT_PREFIX.wq (i8 weights), OUT_PREFIX.bq (i32 bias, absent without bias) and
//! OUT_PREFIX.acc (i32 accumulators, (batch, out) row-major).

mod linear;
mod quant;
mod rng;

use std::fs;
use std::hint::black_box;
use std::io::{self, BufWriter, Write};
use std::process::exit;
use std::time::Instant;

use linear::QuantizedLinear;
use quant::{FakeQuantConfig, FakeQuantize, ObserverMethod, QuantObserver};

fn die(msg: &str) -> ! {
    eprintln!("qatcore-ref: {msg}");
    exit(2)
}

fn usage() -> ! {
    eprintln!(
        "usage:\n  qatcore-ref golden SPEC_FILE OUT_FILE\n  \
         qatcore-ref bench --op OP --n N --repeat R [--bits B] \
         (OP: minmax percentile moving_average mean_std fake_quantize)\n  \
         qatcore-ref bench --op linear --m M --k K --n N --repeat R\n  \
         qatcore-ref linear W_F32 BIAS_F32|- IN OUT BITS SYMMETRIC X_I8 INPUT_SCALE OUT_PREFIX"
    );
    exit(2)
}

fn read_f32_file(path: &str) -> Vec<f32> {
    let bytes = fs::read(path).unwrap_or_else(|e| die(&format!("cannot read {path}: {e}")));
    if bytes.len() % 4 != 0 {
        die(&format!("{path}: size {} is not a multiple of 4", bytes.len()));
    }
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn hex(v: f32) -> String {
    format!("\"{:08x}\"", v.to_bits())
}

fn parse_bool(s: &str) -> bool {
    match s {
        "1" | "true" | "True" => true,
        "0" | "false" | "False" => false,
        _ => die(&format!("not a bool: {s}")),
    }
}

// ---------------------------------------------------------------------------- golden

fn golden(spec_path: &str, out_path: &str) {
    let spec = fs::read_to_string(spec_path)
        .unwrap_or_else(|e| die(&format!("cannot read {spec_path}: {e}")));
    let index = fs::File::create(out_path)
        .unwrap_or_else(|e| die(&format!("cannot create {out_path}: {e}")));
    let bin_path = format!("{out_path}.bin");
    let bin = fs::File::create(&bin_path)
        .unwrap_or_else(|e| die(&format!("cannot create {bin_path}: {e}")));
    let mut index = BufWriter::new(index);
    let mut bin = BufWriter::new(bin);
    let mut offset: usize = 0;
    let mut fq: Option<(String, FakeQuantize)> = None;
    let mut step: usize = 0;

    for (lineno, raw) in spec.lines().enumerate() {
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap();
        let bad = |what: &str| -> ! { die(&format!("{spec_path}:{}: {what}", lineno + 1)) };
        if cmd == "case" {
            let name = words.next().unwrap_or_else(|| bad("case needs a name")).to_string();
            let mut config = FakeQuantConfig::default();
            for kv in words {
                let (k, v) = kv.split_once('=').unwrap_or_else(|| bad("expected key=value"));
                match k {
                    "bits" => config.bits = v.parse().unwrap_or_else(|_| bad("bad bits")),
                    "symmetric" => config.symmetric = parse_bool(v),
                    "learnable" => config.learnable = parse_bool(v),
                    "observer" => {
                        config.observer =
                            ObserverMethod::parse(v).unwrap_or_else(|| bad("unknown observer"))
                    }
                    _ => bad("unknown key"),
                }
            }
            fq = Some((name, FakeQuantize::new(config)));
            step = 0;
            continue;
        }
        let (name, q) = fq.as_mut().unwrap_or_else(|| bad("command before any case"));
        let output: Option<Vec<f32>> = match cmd {
            "fq" => {
                let data = read_f32_file(words.next().unwrap_or_else(|| bad("fq needs a path")));
                Some(q.fake_quantize(&data))
            }
            "fwd" => {
                let data = read_f32_file(words.next().unwrap_or_else(|| bad("fwd needs a path")));
                Some(q.forward(&data))
            }
            "disable" => {
                q.disable_calibration();
                None
            }
            "enable" => {
                q.enable_calibration();
                None
            }
            _ => bad("unknown command"),
        };
        let (lo, hi) = q.observer().range();
        let mut rec = format!(
            "{{\"case\":\"{name}\",\"step\":{step},\"op\":\"{cmd}\",\"min\":{},\"max\":{},\
             \"scale\":{},\"zp\":{}",
            hex(lo),
            hex(hi),
            hex(q.scale()),
            hex(q.zero_point())
        );
        if let Some(out) = output {
            rec.push_str(&format!(",\"off\":{offset},\"len\":{}", out.len()));
            for v in &out {
                bin.write_all(&v.to_le_bytes()).unwrap();
            }
            offset += out.len();
        }
        rec.push('}');
        writeln!(index, "{rec}").unwrap();
        step += 1;
    }
    index.flush().unwrap();
    bin.flush().unwrap();
}

// ----------------------------------------------------------------------------- bench

fn arg_value<'a>(args: &'a [String], key: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == key)
        .map(|i| args.get(i + 1).map(|s| s.as_str()).unwrap_or_else(|| usage()))
}

fn arg_usize(args: &[String], key: &str, default: Option<usize>) -> usize {
    match arg_value(args, key) {
        Some(v) => v.parse().unwrap_or_else(|_| die(&format!("{key}: not an integer: {v}"))),
        None => default.unwrap_or_else(|| die(&format!("missing {key}"))),
    }
}

fn stats(mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = times.len();
    let median = if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    };
    (median, times[0], times[n - 1])
}

fn bench(args: &[String]) {
    let op = arg_value(args, "--op").unwrap_or_else(|| usage()).to_string();
    let n = arg_usize(args, "--n", None);
    let repeat = arg_usize(args, "--repeat", Some(5)).max(1);
    let bits = arg_usize(args, "--bits", Some(8));
    if !(2..=16).contains(&bits) {
        die("--bits must be in 2..=16");
    }
    let mut rng = rng::SplitMix64(0x5eed_0f_9a7c0de);
    let mut times = Vec::with_capacity(repeat);

    if op == "linear" {
        let m = arg_usize(args, "--m", None);
        let k = arg_usize(args, "--k", None);
        let weights = rng.normal_f32(n * k);
        let bias = rng.normal_f32(n);
        let x = rng.codes_i8(m * k);
        let config = FakeQuantConfig {
            bits,
            ..FakeQuantConfig::default()
        };
        let layer = QuantizedLinear::from_float(&weights, Some(&bias), k, n, &config);
        black_box(layer.forward_quantized(black_box(&x)));
        for _ in 0..repeat {
            let t = Instant::now();
            let out = layer.forward_quantized(black_box(&x));
            times.push(t.elapsed().as_secs_f64());
            black_box(out);
        }
        let (median, lo, hi) = stats(times);
        println!(
            "{{\"op\":\"linear\",\"n\":{n},\"repeat\":{repeat},\"median_s\":{median},\
             \"min_s\":{lo},\"max_s\":{hi},\"m\":{m},\"k\":{k}}}"
        );
        return;
    }

    let data = rng.normal_f32(n);
    if op == "fake_quantize" {
        let config = FakeQuantConfig {
            bits,
            ..FakeQuantConfig::default()
        };
        let mut fq = FakeQuantize::new(config);
        black_box(fq.fake_quantize(&data)); // calibrate once, then freeze
        fq.disable_calibration();
        black_box(fq.fake_quantize(black_box(&data))); // warm-up
        for _ in 0..repeat {
            let t = Instant::now();
            let out = fq.fake_quantize(black_box(&data));
            times.push(t.elapsed().as_secs_f64());
            black_box(out);
        }
    } else {
        let method = match op.as_str() {
            "minmax" | "min_max" => ObserverMethod::MinMax,
            "percentile" => ObserverMethod::Percentile,
            "moving_average" => ObserverMethod::MovingAverage,
            "mean_std" => ObserverMethod::MeanStd,
            _ => die(&format!("unknown --op {op}")),
        };
        let mut warm = QuantObserver::new(method);
        warm.observe(black_box(&data));
        black_box(warm.range());
        for _ in 0..repeat {
            let mut obs = QuantObserver::new(method);
            let t = Instant::now();
            obs.observe(black_box(&data));
            times.push(t.elapsed().as_secs_f64());
            black_box(obs.range());
        }
    }
    let (median, lo, hi) = stats(times);
    println!(
        "{{\"op\":\"{op}\",\"n\":{n},\"repeat\":{repeat},\"median_s\":{median},\
         \"min_s\":{lo},\"max_s\":{hi}}}"
    );
}

// ---------------------------------------------------------------------------- linear

fn linear_golden(args: &[String]) {
    if args.len() != 9 {
        usage();
    }
    let weights = read_f32_file(&args[0]);
    let bias = if args[1] == "-" { None } else { Some(read_f32_file(&args[1])) };
    let in_features: usize = args[2].parse().unwrap_or_else(|_| die("bad IN"));
    let out_features: usize = args[3].parse().unwrap_or_else(|_| die("bad OUT"));
    let bits: usize = args[4].parse().unwrap_or_else(|_| die("bad BITS"));
    let symmetric = parse_bool(&args[5]);
    let x: Vec<i8> = fs::read(&args[6])
        .unwrap_or_else(|e| die(&format!("cannot read {}: {e}", args[6])))
        .into_iter()
        .map(|b| b as i8)
        .collect();
    let input_scale: f32 = args[7].parse().unwrap_or_else(|_| die("bad INPUT_SCALE"));
    let prefix = &args[8];
    if weights.len() != in_features * out_features {
        die("weights length != IN * OUT");
    }
    let config = FakeQuantConfig {
        bits,
        symmetric,
        ..FakeQuantConfig::default()
    };
    let mut layer =
        QuantizedLinear::from_float(&weights, bias.as_deref(), in_features, out_features, &config);
    layer.set_input_scale(input_scale);
    let acc = layer.forward_quantized(&x);
    let batch = if in_features == 0 { 0 } else { x.len() / in_features };
    let write = |ext: &str, bytes: Vec<u8>| {
        let path = format!("{prefix}.{ext}");
        fs::write(&path, bytes).unwrap_or_else(|e| die(&format!("cannot write {path}: {e}")));
    };
    write("wq", layer.weights_q.iter().map(|&v| v as u8).collect());
    if let Some(ref bq) = layer.bias_q {
        write("bq", bq.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    write("acc", acc.iter().flat_map(|v| v.to_le_bytes()).collect());
    let meta = format!(
        "{{\"weight_scale\":{},\"input_scale\":{},\"output_scale\":{},\"in_features\":{},\
         \"out_features\":{},\"batch\":{},\"has_bias\":{}}}\n",
        hex(layer.weight_scale),
        hex(layer.input_scale),
        hex(layer.output_scale()),
        in_features,
        out_features,
        batch,
        layer.bias_q.is_some()
    );
    write("json", meta.into_bytes());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(|s| s.as_str()) {
        Some("golden") if args.len() == 3 => golden(&args[1], &args[2]),
        Some("bench") => bench(&args[1..]),
        Some("linear") => linear_golden(&args[1..]),
        _ => usage(),
    }
    io::stdout().flush().ok();
}
