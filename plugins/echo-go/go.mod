module wsplug/plugins/echo-go

go 1.24
