module streamkit/goload

go 1.19
