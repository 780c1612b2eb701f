"""Demo and benchmark helpers, outside the production package: synthetic audio corpora (`demo.synth`),
synthetic token outputs (`demo.synth_tokens`) and FLOP counts of an encode (`demo.flops`).

    python -m demo demo_data/demo-{000..003}.tar     # writes the offline demo's corpus unless it is there
"""
