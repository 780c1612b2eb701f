"""What operators see of a run beside its outputs: the driver's and each actor's logs in the output folder, and live
metrics in Ray's dashboard and Prometheus."""
