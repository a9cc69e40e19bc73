//! Both job kinds end to end over real sockets: every mode, 1 to 3 servers, part counts
//! that differ from server counts; every result checked against one computed here
//! independently of the kernels.

mod support;

use pool_common::jobs::matrix_sum::MatrixTotal;
use pool_common::jobs::PartResult;
use pool_common::splitmix::splitmix64;
use support::{addresses, job_file, options, start_servers};

/// The matrix-sum result computed directly from the definition of the generated matrix.
fn expected_matrix_sum(rows: u64, cols: u64, seed: u64) -> i128 {
    (0..rows * cols)
        .map(|k| splitmix64(seed.wrapping_add(k)) as i64 as i128)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_job_on_1_2_and_3_servers() {
    for (server_count, parts) in [(1, 2), (2, 3), (3, 7)] {
        let servers = start_servers(server_count, 1).await;
        let job = job_file(&format!(
            "parts = {parts}\n[job]\nkind = \"loop\"\niterations = 1048576\n"
        ));
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        assert_eq!(report.runs.len(), 4);
        for run in &report.runs {
            // The design's check value for [0, 2^20).
            assert_eq!(
                run.result,
                PartResult::Loop(8731987058694679736),
                "{:?}",
                run.mode
            );
            assert_eq!(run.parts, parts);
        }
        let pool = report.pool.as_ref().unwrap();
        assert_eq!(pool.parts.len(), parts);
        assert_eq!(pool.servers.len(), server_count.min(parts));
        for server in servers {
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_job_on_1_2_and_3_servers() {
    // 700 rows x 1000 cols = 5.6 MB: parts span more than one 4 MiB data frame.
    let (rows, cols, seed) = (700, 1000, 11);
    let expected =
        PartResult::MatrixSum(MatrixTotal::Integer(expected_matrix_sum(rows, cols, seed)));
    for (server_count, parts) in [(1, 3), (2, 1), (3, 5)] {
        let servers = start_servers(server_count, 2).await;
        let job = job_file(&format!(
            "parts = {parts}\n[job]\nkind = \"matrix-sum\"\nrows = {rows}\ncols = {cols}\nseed = {seed}\n"
        ));
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        assert!(report.all_match());
        for run in &report.runs {
            assert_eq!(
                run.result, expected,
                "{:?} with {server_count} servers",
                run.mode
            );
        }
        for server in servers {
            server.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_matrix_is_summed_exactly() {
    let servers = start_servers(2, 1).await;
    // examples/matrix.csv holds i64::MAX twice: the sum needs more than 64 bits.
    let job = job_file("parts = 4\n[job]\nkind = \"matrix-sum\"\ncsv = \"matrix.csv\"\n");
    let report = pool_client::run(&job, &options(addresses(&servers)))
        .await
        .unwrap();
    let text = std::fs::read_to_string(support::examples_dir().join("matrix.csv")).unwrap();
    let expected: i128 = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .flat_map(|l| {
            l.split(',')
                .map(|c| c.trim().parse::<i128>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(expected > i64::MAX as i128);
    for run in &report.runs {
        assert_eq!(
            run.result,
            PartResult::MatrixSum(MatrixTotal::Integer(expected))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_and_the_job_does_not_hang() {
    // A port that was just free: nothing listens there.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let job = job_file("parts = 2\n[job]\nkind = \"loop\"\niterations = 1000\n");
    let mut opts = options(vec![dead.clone()]);
    opts.modes = vec![pool_client::report::Mode::Pool];
    let error = pool_client::run(&job, &opts).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains(&dead), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}
