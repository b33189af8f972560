use backstop::{Context, Handle, Handler, HandlerError};

struct Order;

#[derive(Handler)]
#[handler(payload = Order)]
struct Fulfil;

impl Handle<Order> for Fulfil {
    type Error = HandlerError;
    async fn handle(&self, _order: Order, _ctx: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
