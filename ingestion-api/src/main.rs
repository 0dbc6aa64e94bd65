// mimalloc: the batch path allocates per event from several threads, where glibc malloc
// spends much of its time on arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use ingestion_api::settings::Settings;
use ingestion_api::startup::Application;

fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(metrics_core::settings::Env::process())?;
    infra::logging::init(settings.log_json);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.worker_threads)
        .enable_all()
        .build()?
        .block_on(async {
            let app = Application::build(settings).await?;
            app.run_until_stopped(infra::shutdown::signal()).await
        })
}
