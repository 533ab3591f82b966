//! `spin`: never returns. The host must stop it with its fuel or wall-clock limit.
use natsplug_sdk::{Message, handler};

handler!(handle);

fn handle(msg: Message) -> natsplug_sdk::Result {
    let mut x = msg.payload.len() as u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}
