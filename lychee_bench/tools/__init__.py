"""Scripts run on a GPU before trusting or tuning a number (``python -m lychee_bench.tools.NAME``): kernel benches
and resource use, reference-vs-efficient path checks, engine checks, the training step's phases. They sit on top
of the library and nothing in it imports them."""
