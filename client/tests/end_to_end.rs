//! The job kinds end to end over real sockets: every mode, 1 to 3 servers, part counts
//! that differ from server counts; every result checked against one computed here
//! independently of the kernels.

mod support;

use pool_client::report::Mode;
use pool_common::jobs::matrix_sum::MatrixTotal;
use pool_common::jobs::PartResult;
use pool_common::splitmix::splitmix64;
use support::{addresses, job_file, options, start_servers, write_npy};

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
        // Every mode but shared memory: parts without data have nothing to share.
        assert_eq!(report.runs.len(), 4);
        assert!(report.runs.iter().all(|run| run.mode != Mode::SharedMemory));
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
        // The pipes and the shared memory both reach the children with the same data.
        let modes: Vec<Mode> = report.runs.iter().map(|run| run.mode).collect();
        assert_eq!(modes, Mode::ALL);
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

/// The correctly rounded sum of a generated f64 matrix, computed without floats:
/// element k is n_k * 2^-53 with n_k = splitmix64(seed + k) >> 11, so the exact sum is
/// (sum of n_k) * 2^-53, the integer sum fits in a u128, `as f64` rounds it to nearest
/// (ties to even), and scaling by a power of two is exact.
fn expected_float_sum(elements: u64, seed: u64) -> f64 {
    let n: u128 = (0..elements)
        .map(|k| (splitmix64(seed.wrapping_add(k)) >> 11) as u128)
        .sum();
    n as f64 * (-53f64).exp2()
}

/// Runs `job` with every mode on `servers`, checks that every mode gave the same result,
/// and returns it.
async fn result_of_every_mode(job: &str, servers: &[String]) -> PartResult {
    let report = pool_client::run(&job_file(job), &options(servers.to_vec()))
        .await
        .unwrap();
    // Matrices carry data, so shared memory runs beside the pipes.
    assert_eq!(report.runs.len(), Mode::ALL.len());
    assert!(report.all_match(), "{job}");
    report.runs[0].result.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_matrix_sums_to_the_same_bits_for_every_split_and_mode() {
    // 700 x 1000 = 5.6 MB: parts span more than one 4 MiB data frame.
    let (rows, cols, seed) = (700, 1000, 3);
    let servers = start_servers(3, 1).await;
    let expected = expected_float_sum(rows * cols, seed);
    for parts in [1, 2, 3, 7] {
        let job = format!(
            "parts = {parts}\n[job]\nkind = \"matrix-sum\"\nelement = \"f64\"\nrows = {rows}\ncols = {cols}\nseed = {seed}\n"
        );
        let PartResult::MatrixSum(MatrixTotal::Float(sum)) =
            result_of_every_mode(&job, &addresses(&servers)).await
        else {
            panic!("an f64 matrix sums to a float");
        };
        assert_eq!(sum.to_f64().to_bits(), expected.to_bits(), "{parts} parts");
        assert_eq!(sum.to_string(), format!("{expected:?}"));
    }
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npy_files_of_both_dtypes_in_every_mode_and_split() {
    let dir = support::temp_dir("e2e-npy");
    let handles = start_servers(2, 1).await;
    let servers = addresses(&handles);
    let tiny = f64::from_bits(1); // 2^-1074, the smallest subnormal
                                  // Every row cancels its huge values: what is left is 5 * 2^-1074 in all, which a
                                  // float sum in any order rounds away.
    let floats: [[f64; 3]; 7] = [
        [1e308, tiny, -1e308],
        [1e-300, 3.0 * tiny, -1e-300],
        [f64::MAX, -f64::MAX, 0.0],
        [-1e308, 1e308, -tiny],
        [tiny, 1e200, -1e200],
        [-0.0, 1.0, -1.0],
        [1e-320, -1e-320, tiny],
    ];
    let bytes: Vec<u8> = floats
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let path = dir.join("floats.npy");
    write_npy(&path, "<f8", "(7, 3)", &bytes);
    let naive: f64 = floats.iter().flatten().sum();
    assert_ne!(
        naive,
        f64::from_bits(5),
        "the file should defeat a naive sum"
    );
    for parts in [1, 2, 3, 7] {
        let job = format!(
            "parts = {parts}\n[job]\nkind = \"matrix-sum\"\nnpy = {:?}\n",
            path.display().to_string()
        );
        let result = result_of_every_mode(&job, &servers).await;
        let PartResult::MatrixSum(MatrixTotal::Float(sum)) = &result else {
            panic!("a <f8 file sums to a float: {result:?}");
        };
        assert_eq!(sum.to_f64().to_bits(), 5, "{parts} parts");
        assert_eq!(result.to_string(), "2.5e-323");
    }

    let integers: Vec<i64> = vec![i64::MAX, i64::MAX, -5, i64::MIN, 7, 1 << 40];
    let bytes: Vec<u8> = integers.iter().flat_map(|v| v.to_le_bytes()).collect();
    let path = dir.join("integers.npy");
    write_npy(&path, "<i8", "(3, 2)", &bytes);
    let expected: i128 = integers.iter().map(|&v| v as i128).sum();
    for parts in [1, 2, 3] {
        let job = format!(
            "parts = {parts}\n[job]\nkind = \"matrix-sum\"\nnpy = {:?}\n",
            path.display().to_string()
        );
        assert_eq!(
            result_of_every_mode(&job, &servers).await,
            PartResult::MatrixSum(MatrixTotal::Integer(expected))
        );
    }
    for server in handles {
        server.shutdown().await;
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
