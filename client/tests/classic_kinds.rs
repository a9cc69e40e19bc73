//! The coursework classics, `primes`, `mandelbrot` and `matmul`, end to end over real
//! sockets: every mode, 1 to 3 servers, results checked against values computed here
//! without the kernels. Mandelbrot parts return more than 64 KiB, so their results
//! travel in data frames after their reply, over TCP and over the worker processes'
//! pipes; a matrix product's B travels once per server.

mod support;

use pool_client::dispatch::ComputedBy;
use pool_common::jobs::mandelbrot::Rows;
use pool_common::jobs::matmul::Product;
use pool_common::jobs::PartResult;
use pool_common::protocol::INLINE_RESULT_BYTES;
use pool_common::splitmix::splitmix64;
use support::{addresses, job_file, options, start_servers};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primes_on_1_2_and_3_servers() {
    for (server_count, parts) in [(1, 2), (2, 5), (3, 7)] {
        let servers = start_servers(server_count, 1).await;
        let job = job_file(&format!(
            "parts = {parts}\n[job]\nkind = \"primes\"\nbelow = 10_000_000\n"
        ));
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        assert_eq!(report.runs.len(), 4);
        for run in &report.runs {
            // pi(10^7), a check value from the literature.
            assert_eq!(run.result, PartResult::Primes(664_579), "{:?}", run.mode);
            assert_eq!(run.parts, parts);
        }
        assert!(report.all_match());
        for server in servers {
            server.shutdown().await;
        }
    }
}

/// The escape count of one pixel, written here from the README's definition rather
/// than taken from the kernel.
fn escape_count(cx: f64, cy: f64, max_iter: u64) -> u64 {
    let (mut x, mut y, mut steps) = (0.0f64, 0.0f64, 0);
    while steps < max_iter && x * x + y * y <= 4.0 {
        let next_x = x * x - y * y + cx;
        y = 2.0 * x * y + cy;
        x = next_x;
        steps += 1;
    }
    steps
}

/// The checksum of an image of the default region (x in [-2, 0.5], y in [-1.25, 1.25]).
fn expected_checksum(width: u64, height: u64, max_iter: u64) -> u64 {
    let (dx, dy) = (2.5 / width as f64, 2.5 / height as f64);
    (0..height)
        .flat_map(|row| (0..width).map(move |col| (row, col)))
        .map(|(row, col)| {
            let cx = -2.0 + (col as f64 + 0.5) * dx;
            let cy = 1.25 - (row as f64 + 0.5) * dy;
            escape_count(cx, cy, max_iter)
        })
        .sum()
}

/// A PNG file's width and height, read from its header.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes[..8], *b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandelbrot_on_1_2_and_3_servers_with_results_over_64_kib() {
    // 800 pixels a row, two bytes each: every part of at most 7 holds 68 rows or more,
    // more than 64 KiB.
    let (width, height, max_iter) = (800, 480, 150);
    let expected = expected_checksum(width, height, max_iter);
    let dir = support::temp_dir("mandelbrot");
    for (server_count, parts) in [(1, 2), (2, 3), (3, 7)] {
        let servers = start_servers(server_count, 1).await;
        let png = dir.join(format!("set-{server_count}.png"));
        let job = job_file(&format!(
            "parts = {parts}\n[job]\nkind = \"mandelbrot\"\nwidth = {width}\nheight = {height}\n\
             max_iter = {max_iter}\noutput = {:?}\n",
            png.display().to_string()
        ));
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        assert!(report.all_match());
        for run in &report.runs {
            let PartResult::Mandelbrot(Rows { checksum, counts }) = &run.result else {
                panic!("{:?}", run.result)
            };
            assert_eq!(*checksum, expected, "{:?}", run.mode);
            assert!(counts.exactly(0, height).is_some(), "{:?}", run.mode);
        }
        let pool = report.pool.as_ref().unwrap();
        for part in &pool.parts {
            assert!(
                part.bytes_received > INLINE_RESULT_BYTES as u64,
                "part {} came back in {} bytes",
                part.part,
                part.bytes_received
            );
        }
        assert_eq!(report.saved, std::slice::from_ref(&png));
        assert_eq!(png_size(&png), (width as u32, height as u32));
        for server in servers {
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_longer_than_a_frame_crosses_a_socket_and_a_pipe() {
    // One part of 2048 x 1100 pixels: 4.5 MB of counts, more than a 4 MiB frame, so
    // its result travels in two data frames.
    let (width, height, max_iter) = (2048, 1100, 3);
    let servers = start_servers(1, 1).await;
    let job = job_file(&format!(
        "parts = 1\n[job]\nkind = \"mandelbrot\"\nwidth = {width}\nheight = {height}\nmax_iter = {max_iter}\n"
    ));
    let report = pool_client::run(&job, &options(addresses(&servers)))
        .await
        .unwrap();
    assert!(report.all_match());
    let expected = expected_checksum(width, height, max_iter);
    for run in &report.runs {
        let PartResult::Mandelbrot(rows) = &run.result else {
            panic!("{:?}", run.result)
        };
        assert_eq!(rows.checksum, expected, "{:?}", run.mode);
    }
    let received = report.pool.as_ref().unwrap().parts[0].bytes_received;
    assert!(received > 4 << 20, "{received} bytes");
    assert!(report.saved.is_empty());
    for server in servers {
        server.shutdown().await;
    }
}

/// Element `k` of the sequence A and then B are read from, as the README defines it:
/// A's element k is `at(seed, k)`, B's is `at(seed, n*n + k)`.
fn matrix_element(seed: u64, k: u64) -> u64 {
    splitmix64(seed.wrapping_add(k)) >> 48
}

/// The sum of all of C = A · B, without multiplying the matrices: the sum of C is
/// Σ_k (the sum of A's column k) · (the sum of B's row k).
fn expected_matmul_sum(n: u64, seed: u64) -> u128 {
    (0..n)
        .map(|k| {
            let a_column: u128 = (0..n)
                .map(|i| u128::from(matrix_element(seed, i * n + k)))
                .sum();
            let b_row: u128 = (0..n)
                .map(|j| u128::from(matrix_element(seed, n * n + k * n + j)))
                .sum();
            a_column * b_row
        })
        .sum()
}

/// Rows `rows` of C, by the textbook triple loop, as little-endian `u64`s.
fn naive_c_rows(n: u64, seed: u64, rows: std::ops::Range<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in rows {
        for j in 0..n {
            let c: u64 = (0..n)
                .map(|k| matrix_element(seed, i * n + k) * matrix_element(seed, n * n + k * n + j))
                .sum();
            bytes.extend_from_slice(&c.to_le_bytes());
        }
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matmul_on_1_2_and_3_servers_ships_b_once_per_server() {
    let n = 150u64;
    let dir = support::temp_dir("matmul");
    for (server_count, parts, seed) in [(1, 2, 1), (2, 5, 2), (3, 7, 3)] {
        let servers = start_servers(server_count, 1).await;
        let c_file = dir.join(format!("c-{server_count}.u64"));
        let job = job_file(&format!(
            "parts = {parts}\n[job]\nkind = \"matmul\"\nn = {n}\nseed = {seed}\noutput = {:?}\n",
            c_file.display().to_string()
        ));
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        // Every mode, shared memory included: each part ships a block of A.
        assert_eq!(report.runs.len(), 5);
        assert!(report.all_match());
        let expected = expected_matmul_sum(n, seed);
        for run in &report.runs {
            let PartResult::Matmul(Product { sum, rows }) = &run.result else {
                panic!("{:?}", run.result)
            };
            assert_eq!(*sum, expected, "{:?}", run.mode);
            assert!(
                rows.as_ref().unwrap().exactly(0, n).is_some(),
                "{:?}",
                run.mode
            );
        }
        assert_eq!(report.saved, std::slice::from_ref(&c_file));
        assert_eq!(std::fs::read(&c_file).unwrap(), naive_c_rows(n, seed, 0..n));

        // B (2 bytes an element) went once to each server that computed parts (parts
        // this small may all be done before a slow connection opens), before its first
        // part; A went once in all, a block of rows to each part.
        let matrix_bytes = 2 * n * n;
        let pool = report.pool.as_ref().unwrap();
        let computed_on = |address: &str| {
            pool.parts
                .iter()
                .any(|part| part.computed_by == ComputedBy::Server(address.to_string()))
        };
        for server in pool.servers.iter().filter(|s| computed_on(&s.address)) {
            let shared = server.shared.expect("B is shipped before the first part");
            assert!(
                (matrix_bytes..matrix_bytes + 1024).contains(&shared.bytes),
                "{}: B shipped in {} bytes",
                server.address,
                shared.bytes
            );
        }
        let a_bytes: u64 = pool.parts.iter().map(|part| part.bytes_sent).sum();
        assert!(
            (matrix_bytes..matrix_bytes + 1024 * parts as u64).contains(&a_bytes),
            "A shipped in {a_bytes} bytes"
        );
        for server in servers {
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matmul_part_of_several_chunks_keeps_its_rows_in_order() {
    // n = 1500: a row of A is 3000 bytes, so one part of every row ships 4.5 MB in two
    // chunks of whole rows (1398 rows, then 102), computed apart and put back in order.
    let (n, seed) = (1500u64, 11);
    let dir = support::temp_dir("matmul-chunks");
    let c_file = dir.join("c.u64");
    let servers = start_servers(1, 2).await;
    let job = job_file(&format!(
        "parts = 1\n[job]\nkind = \"matmul\"\nn = {n}\nseed = {seed}\noutput = {:?}\n",
        c_file.display().to_string()
    ));
    let report = pool_client::run(&job, &options(addresses(&servers)))
        .await
        .unwrap();
    assert!(report.all_match());
    let PartResult::Matmul(Product { sum, .. }) = &report.runs[0].result else {
        panic!("{:?}", report.runs[0].result)
    };
    assert_eq!(*sum, expected_matmul_sum(n, seed));
    let sent = report.pool.as_ref().unwrap().parts[0].bytes_sent;
    assert!(sent > 4 << 20, "{sent} bytes");
    // The rows on both sides of the cut, by the triple loop.
    let c = std::fs::read(&c_file).unwrap();
    let row_bytes = n as usize * 8;
    assert_eq!(c.len(), n as usize * row_bytes);
    assert_eq!(
        c[1396 * row_bytes..1400 * row_bytes],
        naive_c_rows(n, seed, 1396..1400)
    );
    for server in servers {
        server.shutdown().await;
    }
}
