//! `consumer`: reads every shard of the Kinesis stream and logs each `DataMessage` it finds.
//!
//! `consumer multilang FILE` (or `consumer multilang --properties-file FILE`) runs a KCL
//! application written in another language from the Java MultiLangDaemon's properties file:
//! one child process per lease (see `kinesis_consumer::multilang`).
//!
//! `consumer healthcheck` asks a running consumer's `/healthz` (on `HTTP_ADDR`) and exits 0 if
//! it answered 200: the container health check, since the image has no shell or curl.
//!
//! Exit codes: 0 after a stop signal; 1 when the run failed (stream missing); 2 for a bad
//! setting, including a lease table that belongs to another stream.

// glibc's malloc showed up as a quarter of the producer's CPU profile at high rates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kinesis_common::config::ConsumerSettings;

/// The properties file of `consumer multilang FILE`, `--properties-file FILE` or `-p FILE`.
fn properties_file(args: &[String]) -> Option<&str> {
    match args {
        [flag, file] if flag == "--properties-file" || flag == "-p" => Some(file),
        [file] if !file.starts_with('-') => Some(file),
        _ => None,
    }
}

/// The process environment, leaving out variables that are not UTF-8 (none of ours).
fn environment() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

async fn multilang(args: &[String]) -> std::process::ExitCode {
    let Some(file) = properties_file(args) else {
        eprintln!("usage: consumer multilang FILE | consumer multilang --properties-file FILE");
        return std::process::ExitCode::from(2);
    };
    let settings = match kinesis_consumer::multilang::load(file.as_ref(), environment()) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("consumer: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let recent = kinesis_common::telemetry::init(settings.consumer.shared.log_format);
    let cancel = kinesis_common::shutdown::on_signal();
    exit_code(kinesis_consumer::multilang::run(settings, cancel, recent).await)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("multilang") {
        return multilang(&args[1..]).await;
    }
    let settings = match ConsumerSettings::from_env() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("consumer: configuration error: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return kinesis_common::http::healthcheck_main("consumer", settings.shared.http_addr);
    }
    let recent = kinesis_common::telemetry::init(settings.shared.log_format);
    let cancel = kinesis_common::shutdown::on_signal();
    let result = async {
        let sdk = kinesis_common::aws::load().await?;
        kinesis_consumer::run(settings, &sdk, cancel, recent).await
    }
    .await;
    exit_code(result)
}

fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            kinesis_common::telemetry::log_error_chain("consumer failed", &err);
            // STREAM_NAME and CONSUMER_APPLICATION_NAME do not go together: a setting to fix.
            if err
                .downcast_ref::<kinesis_consumer::lease::OtherStreamError>()
                .is_some()
            {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
