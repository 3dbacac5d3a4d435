"""Image garbage collection: which images may go, when, and the reservations that keep an
image admitted by a pod out of its reach."""
