"""What every job runs on, below the models' users: processes and ranks (`distributed`), where bf16 autocast is used
(`precision`), and FLOP counting and throughput (`perf`)."""
