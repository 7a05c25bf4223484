//! Hello-world `lambda_runtime` function: the cold-start baseline of the scale benchmark
//! (`src/bin/bench.rs`, BENCHMARKS.md). Same runtime, async executor and profile as the real
//! Lambdas, nothing else: no tracing set-up, no AWS SDK, no configuration. It echoes its event.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
