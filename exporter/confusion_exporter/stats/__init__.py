"""Pure numpy/scipy statistics over confusion matrices; no I/O, no SQL, no Prometheus."""
