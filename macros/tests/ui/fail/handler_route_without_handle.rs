use backstop::{Context, Handle, Handler, HandlerError};

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Placed {}

#[derive(Clone, serde::Deserialize, backstop::Payload)]
struct Cancelled {}

#[derive(Handler)]
#[handler(routes("order.placed" = Placed, "order.cancelled" = Cancelled))]
struct Orders;

impl Handle<Placed> for Orders {
    type Error = HandlerError;
    async fn handle(&self, _order: Placed, _ctx: Context) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
