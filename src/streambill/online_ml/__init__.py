"""Online machine learning inside the stream: fraud scores and usage forecasts that learn one
event at a time (River), their features, a generated population and prequential evaluation."""
