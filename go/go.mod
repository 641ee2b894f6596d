module github.com/vmta/vmta/go

go 1.19
