//! Query cancellation through the proxy. A compute's BackendKeyData
//! (process id and secret key) reaches the client unchanged, so the
//! client's CancelRequest — sent to the proxy, on a new connection — names
//! the compute's own key; the proxy looks up which compute issued it and
//! hands the request on there.
//!
//! Invariants: a key is registered while its session lives and removed
//! when it ends; a request for an unknown key is dropped without a reply
//! (as PostgreSQL does), so it reveals nothing; the compute itself checks
//! the secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tracing::info;

#[derive(Default)]
pub struct CancelMap {
    keys: Mutex<HashMap<(i32, i32), (String, u16)>>,
}

/// Removes its key from the map when the session ends.
pub struct Registration {
    map: Arc<CancelMap>,
    key: (i32, i32),
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.map.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl CancelMap {
    pub fn register(self: &Arc<Self>, process_id: i32, secret_key: i32, host: String, port: u16) -> Registration {
        let key = (process_id, secret_key);
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(key, (host, port));
        Registration { map: Arc::clone(self), key }
    }

    /// Forward a CancelRequest to the compute that issued the key, if any.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) {
        let target = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&(process_id, secret_key)).cloned();
        let Some((host, port)) = target else {
            info!(process_id, "cancel request for an unknown key dropped");
            return;
        };
        let mut packet = Vec::with_capacity(16);
        packet.extend_from_slice(&16i32.to_be_bytes());
        packet.extend_from_slice(&80877102i32.to_be_bytes());
        packet.extend_from_slice(&process_id.to_be_bytes());
        packet.extend_from_slice(&secret_key.to_be_bytes());
        match tokio::net::TcpStream::connect((host.as_str(), port)).await {
            Ok(mut s) => {
                let _ = s.write_all(&packet).await;
                info!(process_id, %host, port, "cancel request forwarded");
            }
            Err(e) => info!(process_id, "cancel request: compute at {host}:{port} unreachable: {e}"),
        }
    }
}
