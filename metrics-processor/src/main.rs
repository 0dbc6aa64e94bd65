use metrics_processor::settings::Settings;
use metrics_processor::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(metrics_core::settings::Env::process())?;
    infra::logging::init(settings.log_json);
    let app = Application::build(settings).await?;
    app.run_until_stopped(infra::shutdown::signal()).await
}
