"""HTTP routers, one per concern. `service.app.ROUTERS` lists them in one place."""
