//! `consumer`: reads every shard of the Kinesis stream and logs each `DataMessage` it finds.
//!
//! `consumer healthcheck` asks a running consumer's `/healthz` (on `HTTP_ADDR`) and exits 0 if
//! it answered 200: the container health check, since the image has no shell or curl.
//!
//! Exit codes: 0 after a stop signal; 1 when the run failed (stream missing); 2 for a bad
//! setting, including a lease table that belongs to another stream.

// glibc's malloc showed up as a quarter of the producer's CPU profile at high rates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use common::config::ConsumerSettings;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let settings = match ConsumerSettings::from_env() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("consumer: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return common::http::healthcheck_main("consumer", settings.shared.http_addr);
    }
    let recent = common::telemetry::init(settings.shared.log_format);
    let cancel = common::shutdown::on_signal();
    let result = async {
        let sdk = common::aws::load().await?;
        consumer::run(settings, &sdk, cancel, recent).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            common::telemetry::log_error_chain("consumer failed", &err);
            // STREAM_NAME and CONSUMER_APPLICATION_NAME do not go together: a setting to fix.
            if err
                .downcast_ref::<consumer::lease::table::OtherStreamError>()
                .is_some()
            {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
