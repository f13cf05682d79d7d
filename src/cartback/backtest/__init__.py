"""`cartback simulate`: replay a store's historical checkouts through its flows in virtual time,
with the worker's engine, policy and renderer, and a seeded model of what shoppers do."""
