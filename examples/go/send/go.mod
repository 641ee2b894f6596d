module vmta-example-send

go 1.19

require github.com/vmta/vmta/go v0.0.0

// The module from this checkout; without this line `go get github.com/vmta/vmta/go` fetches it.
replace github.com/vmta/vmta/go => ../../../go
