//! The footprint benchmark's baseline: the same tokio runtime an app on
//! the SDK starts, with one outbound TCP connection and nothing of the SDK,
//! so that the SDK's share of a binary and of idle memory shows by
//! difference with `sdk/examples/minimal.rs`.

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9".to_string());
    // Dial out once (an app does), then idle until told to stop, holding
    // the connection (or what is left of it) like an app holds its channel.
    let conn = tokio::net::TcpStream::connect(&addr).await;
    println!("baseline: started connected={}", conn.is_ok());
    let _ = tokio::signal::ctrl_c().await;
    drop(conn);
    Ok(())
}
