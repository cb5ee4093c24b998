# steward-op: ad.new_user@1
# Steward PowerShell template ad.new_user, version 1: create an AD user (a half-created account, e.g. after a refused password, is removed again).
# Cmdlets: Get-ADUser, New-ADUser, Remove-ADUser.
# Runs directly on the target machine.
# Every value comes from $StewardPayload (base64 of UTF-8 JSON) decoded below; none is part of this text.
#Requires -Version 5.1
$ErrorActionPreference = 'Stop'
$StewardTemplate = 'ad.new_user@1'
$StewardPayload = ''
$StewardOp = {
    param([string]$StewardPayload)
    $StewardTemplate = 'ad.new_user@1'
    $ErrorActionPreference = 'Stop'
    $ProgressPreference = 'SilentlyContinue'
    $StewardPrior = $null
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($StewardPayload)) | ConvertFrom-Json
    $StewardSecrets = @(foreach ($StewardName in @('password')) {
        $StewardProp = $p.PSObject.Properties[$StewardName]
        if ($null -ne $StewardProp -and $null -ne $StewardProp.Value -and [string]$StewardProp.Value -ne '') { [string]$StewardProp.Value }
    })
    function Test-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        return ($null -ne $prop -and $null -ne $prop.Value)
    }
    function Get-StewardValue {
        param([string]$Name)
        $prop = $p.PSObject.Properties[$Name]
        if ($null -eq $prop) { return $null }
        return $prop.Value
    }
    function Hide-StewardSecret {
        param([string]$Text)
        foreach ($StewardSecret in $StewardSecrets) { $Text = $Text.Replace($StewardSecret, '[redacted]') }
        return $Text
    }
    function Get-StewardCategory {
        param($ErrorRecord)
        $type = $ErrorRecord.Exception.GetType().Name
        $text = [string]$ErrorRecord.Exception.Message
        if ($type -match 'ADIdentityNotFoundException|ManagementObjectNotFoundException|ItemNotFoundException') { return 'not_found' }
        if ($type -match 'ADIdentityAlreadyExistsException') { return 'already_exists' }
        if ($type -match 'ADPasswordComplexityException') { return 'password_policy' }
        if ($type -match 'PSRemotingTransportException') { return 'winrm_unreachable' }
        if ($type -match 'CommandNotFoundException') { return 'module_missing' }
        if ($text -match 'was not loaded because no valid module file was found') { return 'module_missing' }
        if ($text -match 'AAD is busy') { return 'sync_busy' }
        return 'error'
    }
    function Out-StewardResult {
        param([string]$Status, $Result = $null, $Prior = $null, [string]$Reason = '', [string]$Category = '')
        $StewardOut = [ordered]@{
            template = $StewardTemplate
            status = $Status
            result = $Result
            prior = $Prior
            reason = (Hide-StewardSecret $Reason)
            category = $Category
        }
        return ('STEWARD-RESULT ' + (ConvertTo-Json -InputObject $StewardOut -Compress -Depth 10))
    }
    try {
        Import-Module ActiveDirectory
        $StewardAd = @{}
        if (Test-StewardValue 'server') { $StewardAd['Server'] = [string](Get-StewardValue 'server') }
        function Get-StewardParentDn {
            param([string]$Dn)
            return ($Dn -replace '^(?:\\.|[^\\,])+,', '')
        }
        function Find-StewardAdUser {
            param([string]$Identity)
            $props = @('DisplayName', 'GivenName', 'Surname', 'mail', 'Manager', 'MemberOf', 'LockedOut', 'whenCreated', 'Title', 'Department')
            if ($Identity -match '@' -and $Identity -notmatch '=') {
                $StewardUpn = $Identity
                $found = @(Get-ADUser @StewardAd -Filter 'UserPrincipalName -eq $StewardUpn' -Properties $props)
                if ($found.Count -gt 1) { throw ('More than one AD user has the user principal name ' + $Identity + '.') }
                if ($found.Count -eq 1) { return $found[0] }
                return $null
            }
            try {
                return (Get-ADUser @StewardAd -Identity $Identity -Properties $props)
            } catch {
                if ($_.Exception.GetType().Name -eq 'ADIdentityNotFoundException') { return $null }
                throw
            }
        }
        function Get-StewardAdUser {
            param([string]$Identity)
            $found = Find-StewardAdUser -Identity $Identity
            if ($null -eq $found) { throw (New-Object System.Management.Automation.ItemNotFoundException ("Cannot find an object with identity: '" + $Identity + "'.")) }
            return $found
        }
        function ConvertTo-StewardAdUser {
            param($User)
            $created = $null
            if ($null -ne $User.whenCreated) { $created = $User.whenCreated.ToUniversalTime().ToString('o') }
            return [ordered]@{
                distinguished_name = [string]$User.DistinguishedName
                parent = (Get-StewardParentDn ([string]$User.DistinguishedName))
                object_guid = [string]$User.ObjectGUID
                sam_account_name = [string]$User.SamAccountName
                user_principal_name = [string]$User.UserPrincipalName
                enabled = [bool]$User.Enabled
                locked_out = [bool]$User.LockedOut
                display_name = $User.DisplayName
                given_name = $User.GivenName
                surname = $User.Surname
                title = $User.Title
                department = $User.Department
                mail = $User.mail
                manager = $User.Manager
                when_created = $created
            }
        }
        $sam = [string]$p.sam_account_name
        $upn = [string]$p.user_principal_name
        $path = [string]$p.path
        $StewardPrior = [ordered]@{ existed = $false }
        $existing = Find-StewardAdUser -Identity $sam
        if ($null -ne $existing) {
            if ([string]$existing.UserPrincipalName -eq $upn -and (Get-StewardParentDn ([string]$existing.DistinguishedName)) -eq $path) {
                $StewardPrior = [ordered]@{ existed = $true }
                return (Out-StewardResult -Status 'unchanged' -Result (ConvertTo-StewardAdUser $existing) -Prior $StewardPrior)
            }
            return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('New-ADUser : The specified account already exists: ' + $sam + ' is ' + [string]$existing.UserPrincipalName + ' in ' + [string]$existing.DistinguishedName + '.'))
        }
        $clash = Find-StewardAdUser -Identity $upn
        if ($null -ne $clash) {
            return (Out-StewardResult -Status 'failed' -Category 'already_exists' -Prior $StewardPrior -Reason ('New-ADUser : The user principal name ' + $upn + ' is already used by ' + [string]$clash.SamAccountName + '.'))
        }
        $name = $sam
        foreach ($StewardField in @('name', 'display_name')) {
            if (Test-StewardValue $StewardField) { $name = [string](Get-StewardValue $StewardField); break }
        }
        $enabled = $true
        if (Test-StewardValue 'enabled') { $enabled = [bool]$p.enabled }
        $changeAtLogon = $true
        if (Test-StewardValue 'change_password_at_logon') { $changeAtLogon = [bool]$p.change_password_at_logon }
        $params = @{
            Name = $name
            SamAccountName = $sam
            UserPrincipalName = $upn
            Path = $path
            AccountPassword = (ConvertTo-SecureString -String ([string]$p.password) -AsPlainText -Force)
            Enabled = $enabled
            ChangePasswordAtLogon = $changeAtLogon
        }
        $optional = [ordered]@{ given_name = 'GivenName'; surname = 'Surname'; display_name = 'DisplayName'; title = 'Title'; department = 'Department'; mail = 'EmailAddress' }
        foreach ($StewardField in $optional.Keys) {
            if (Test-StewardValue $StewardField) { $params[$optional[$StewardField]] = [string](Get-StewardValue $StewardField) }
        }
        if (Test-StewardValue 'manager') { $params['Manager'] = [string](Get-StewardAdUser -Identity ([string]$p.manager)).DistinguishedName }
        try {
            New-ADUser @StewardAd @params -Confirm:$false
        } catch {
            $StewardError = $_
            $half = Find-StewardAdUser -Identity $sam
            if ($null -ne $half) { Remove-ADUser @StewardAd -Identity ([string]$half.DistinguishedName) -Confirm:$false }
            throw $StewardError
        }
        $created = Get-StewardAdUser -Identity $sam
        return (Out-StewardResult -Status 'changed' -Result (ConvertTo-StewardAdUser $created) -Prior $StewardPrior)
    } catch {
        return (Out-StewardResult -Status 'failed' -Prior $StewardPrior -Reason ([string]$_.Exception.Message) -Category (Get-StewardCategory $_))
    }
}
$StewardLines = @()
try {
    $StewardLines = @(& $StewardOp $StewardPayload)
} catch {
    $StewardLines = @('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = [string]$_.Exception.Message; category = 'error' })))
}
$StewardResult = @($StewardLines | Where-Object { $_ -is [string] -and $_.StartsWith('STEWARD-RESULT ') })
if ($StewardResult.Count -ge 1) {
    Write-Output $StewardResult[$StewardResult.Count - 1]
} else {
    Write-Output ('STEWARD-RESULT ' + (ConvertTo-Json -Compress -InputObject ([ordered]@{ template = $StewardTemplate; status = 'failed'; result = $null; prior = $null; reason = 'the script produced no result line'; category = 'error' })))
}
