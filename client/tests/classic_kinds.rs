//! The coursework classics, `primes` and `mandelbrot`, end to end over real sockets:
//! every mode, 1 to 3 servers, results checked against values computed here without
//! the kernels. Mandelbrot parts return more than 64 KiB, so their results travel in
//! data frames after their reply, over TCP and over the worker processes' pipes.

mod support;

use pool_common::jobs::mandelbrot::Rows;
use pool_common::jobs::PartResult;
use pool_common::protocol::INLINE_RESULT_BYTES;
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
            let PartResult::Mandelbrot(Rows {
                checksum, blocks, ..
            }) = &run.result
            else {
                panic!("{:?}", run.result)
            };
            assert_eq!(*checksum, expected, "{:?}", run.mode);
            assert_eq!(blocks.len(), 1);
            assert_eq!(blocks[0].counts.len() as u64, width * height * 2);
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
    std::fs::remove_dir_all(&dir).unwrap();
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
