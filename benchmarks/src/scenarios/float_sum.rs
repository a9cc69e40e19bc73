//! Scenario 8: the exact float sum. One core sums a float matrix with the product's
//! kernel (a part computed chunk by chunk into exact sums, rounded once), beside the
//! plain order-dependent `f64` sum of the same bytes, left to right, in the same run.
//! Two inputs: the generated matrix (uniform in [0, 1), few exponents) and values with
//! exponents across the whole `f64` range (every one of the kernel's 2047 bins in use).

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;
use pool_common::jobs::matrix_sum::{Element, Matrix, MatrixPart};
use pool_common::jobs::{CancelFlag, Part, PartTask};
use pool_common::splitmix::splitmix64;

use super::{blocking, secs, Settings};
use crate::figures::{Figure, Goal};

const SCENARIO: &str = "8 exact float sum (one core)";

/// Times each input is summed per measurement, so one measurement lasts long enough
/// to time (a 128 MiB pass takes tens of milliseconds).
const PASSES: usize = 4;

/// Runs the scenario and returns its figures.
pub async fn run(s: &Settings) -> anyhow::Result<Vec<Figure>> {
    let elements: u64 = if s.quick { 1 << 20 } else { 1 << 24 };
    let (generated, wide) = blocking(move || {
        let generated = Matrix::generate(1, elements, 1, Element::F64)
            .bytes()
            .clone();
        (generated, wide_exponents(elements))
    })
    .await?;
    check_generated_sum(&generated, elements)?;
    let inputs = [
        ("generated matrix, [0, 1)", generated),
        ("exponents across the whole range", wide),
    ];
    let mut m: BTreeMap<(usize, &str), Vec<f64>> = BTreeMap::new();
    for _ in 0..s.runs {
        for (i, (_, bytes)) in inputs.iter().enumerate() {
            let bytes = bytes.clone();
            let (exact, plain) = blocking(move || (time_exact(&bytes), time_plain(&bytes))).await?;
            m.entry((i, "exact")).or_default().push(exact);
            m.entry((i, "plain")).or_default().push(plain);
        }
    }
    let mib = (elements * 8) as f64 / (1 << 20) as f64;
    Ok(inputs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            Figure::against(
                SCENARIO,
                format!("exact f64 sum, {name}, {mib:.0} MiB"),
                "GB/s",
                &m[&(i, "exact")],
                "plain f64 sum, left to right",
                &m[&(i, "plain")],
            )
            .goal(Goal::AtLeast(1.0))
        })
        .collect())
}

/// Values with a random sign, exponent field in [1, 2046] and significand: every
/// normal magnitude, no subnormals (which slow some CPUs' plain adds).
fn wide_exponents(elements: u64) -> Bytes {
    let mut data = Vec::with_capacity(elements as usize * 8);
    for k in 0..elements {
        let r = splitmix64(k);
        let exponent = 1 + (r >> 52) % 2046;
        let bits = (r & (1 << 63)) | exponent << 52 | (r & ((1 << 52) - 1));
        data.extend_from_slice(&bits.to_le_bytes());
    }
    Bytes::from(data)
}

/// `bytes` as one part of a one-row float matrix.
fn float_part(bytes: &Bytes) -> Part {
    let task = PartTask::MatrixSum(MatrixPart {
        first_row: 0,
        rows: 1,
        cols: bytes.len() as u64 / 8,
        element: Element::F64,
    });
    Part::new(0, task, bytes.clone())
}

/// GB/s of the product's kernel on `bytes`: one part, computed chunk by chunk in this
/// thread as any mode does.
fn time_exact(bytes: &Bytes) -> f64 {
    let part = float_part(bytes);
    let started = Instant::now();
    for _ in 0..PASSES {
        let result = part.compute(&CancelFlag::new()).expect("never cancelled");
        std::hint::black_box(result);
    }
    (bytes.len() * PASSES) as f64 / secs(started.elapsed()) / 1e9
}

/// GB/s of the plain sum of `bytes` as `f64`s, added left to right.
fn time_plain(bytes: &Bytes) -> f64 {
    let started = Instant::now();
    for _ in 0..PASSES {
        let sum: f64 = std::hint::black_box(&bytes[..])
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .sum();
        std::hint::black_box(sum);
    }
    (bytes.len() * PASSES) as f64 / secs(started.elapsed()) / 1e9
}

/// Fails unless the kernel's sum of the generated matrix is the correctly rounded one,
/// computed without floats: element k is n_k * 2^-53 with n_k an integer, so the sum is
/// (sum of n_k) * 2^-53, and a u128 converts to the nearest f64.
fn check_generated_sum(bytes: &Bytes, elements: u64) -> anyhow::Result<()> {
    let n: u128 = (0..elements)
        .map(|k| (splitmix64(1 + k) >> 11) as u128)
        .sum();
    let expected = n as f64 * (-53f64).exp2();
    let got = float_part(bytes)
        .compute(&CancelFlag::new())
        .expect("never cancelled");
    if got.to_string() != format!("{expected:?}") {
        bail!("the exact sum gave {got}, the correctly rounded sum is {expected:?}");
    }
    Ok(())
}
