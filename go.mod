module github.com/svcplane/svcplane

go 1.26
