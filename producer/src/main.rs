//! `producer`: puts a JSON `DataMessage` on the Kinesis stream every `PRODUCER_INTERVAL_MS`.
//!
//! `producer healthcheck` asks a running producer's `/healthz` (on `HTTP_ADDR`) and exits 0 if
//! it answered 200: the container health check, since the image has no shell or curl.
//!
//! Exit codes: 0 after a stop signal or after `PRODUCER_COUNT` acknowledged messages; 1 when
//! the run failed (stream missing, records not acknowledged); 2 for a bad setting.

// glibc's malloc showed up as a quarter of the producer's CPU profile at high rates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kinesis_common::config::ProducerSettings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match ProducerSettings::from_env() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("producer: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return kinesis_common::http::healthcheck_main("producer", settings.shared.http_addr);
    }
    // The producer's page keeps its own list of records not sent.
    let _recent = kinesis_common::telemetry::init(settings.shared.log_format);
    let cancel = kinesis_common::shutdown::on_signal();
    let result = async {
        let sdk = kinesis_common::aws::load().await?;
        let client = kinesis_common::aws::kinesis(&sdk, &settings.shared.timeouts);
        kinesis_producer::service::run(settings, client, cancel).await
    }
    .await;
    match result {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            kinesis_common::telemetry::log_error_chain("producer failed", &err);
            std::process::ExitCode::FAILURE
        }
    }
}
