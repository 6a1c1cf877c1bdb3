"""What the people around a run see: the HTTP server (dashboard, JSON API, ``/metrics``, checkpoint files with
Range/ETag) and the gRPC server (``warmswarm.v1.Coordinator`` with health and reflection).

``coordinator.serving`` builds them from objects the coordinator owns — ``create_http_app(store, checkpoints_dir,
run_info, metrics)`` + ``start_http_server(app, host, port)`` and ``start_grpc_server(store, checkpoints_dir, host,
port, metrics)`` — so nothing here is global and tests run several side by side on OS-chosen ports.
"""
