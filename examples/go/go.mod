module vmta.example/vmta

go 1.19
