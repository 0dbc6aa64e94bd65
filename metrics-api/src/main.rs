use metrics_api::settings::Settings;
use metrics_api::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env(common::settings::Env::process())?;
    common::telemetry::init(settings.log_json);
    let app = Application::build(settings).await?;
    app.run_until_stopped(common::shutdown::signal()).await
}
